"""The service's pair explanations, re-ranking parameter and overlay kinds, through FastAPI's test client."""
import io

import numpy as np
import pytest
from PIL import Image

from retrieval.rerank import rerank_search
from retrieval.gallery import open_gallery

from .test_api import upload


def _cosine(client, query_item: int, item: int) -> float:
    hits = client.get(f"/items/{query_item}/neighbours", params={"k": 9}).json()["queries"][0]["results"]
    return next(h["score"] for h in hits if h["id"] == item)


def test_explaining_two_gallery_items_splits_their_search_score(client_for, index_dir):
    client = client_for(index_dir)
    response = client.get("/items/5/explain", params={"query_item": 2})
    assert response.status_code == 200, response.text
    e = response.json()
    # The explanation's score is the cosine the search ranks by, and the branches' shares add up to it
    # (float32 embeddings against a float64 split: 1e-4 is loose for both).
    assert e["score"] == pytest.approx(_cosine(client, 2, 5), abs=1e-4)
    assert sum(e["shares"].values()) == pytest.approx(e["score"], abs=1e-5)
    assert set(e["shares"]) == set(e["exact"]) and e["note"]
    q, r = np.array(e["query_map"]), np.array(e["result_map"])
    assert q.ndim == 2 and r.ndim == 2 and q.size > 1 and np.isfinite(q).all() and np.isfinite(r).all()
    # Each map holds the whole score: its locations' contributions sum to it (exact for S, and the
    # first-order maps are scaled to their branch's share; retrieval/explain.py).
    assert q.sum() == pytest.approx(e["score"], abs=1e-4) and r.sum() == pytest.approx(e["score"], abs=1e-4)


def test_explaining_an_upload_matches_explaining_the_same_gallery_image(client_for, index_dir, assets):
    client = client_for(index_dir)
    by_upload = client.post("/explain", params={"result": 6}, files=upload(assets["paths"][3]))
    assert by_upload.status_code == 200, by_upload.text
    by_item = client.get("/items/6/explain", params={"query_item": 3}).json()
    assert by_upload.json()["score"] == pytest.approx(by_item["score"], abs=1e-5)
    np.testing.assert_allclose(by_upload.json()["query_map"], by_item["query_map"], atol=1e-6)


def test_explain_refuses_unknown_items_and_bad_uploads_in_the_error_shape(client_for, index_dir):
    client = client_for(index_dir)
    for response, status in ((client.get("/items/99/explain", params={"query_item": 2}), 404),
                             (client.get("/items/2/explain", params={"query_item": 99}), 404),
                             (client.get("/items/2/explain"), 422),
                             (client.post("/explain", params={"result": 2},
                                          files=[("images", ("x.png", b"not an image", "image/png"))]), 400)):
        assert response.status_code == status and set(response.json()) == {"error"}, response.text


def test_rerank_parameter_returns_the_library_s_reranked_list(client_for, index_dir):
    client = client_for(index_dir)
    plain = client.get("/items/4/neighbours", params={"k": 5}).json()["queries"][0]["results"]
    response = client.get("/items/4/neighbours", params={"k": 5, "rerank": "aqe:n=2,alpha=3"})
    assert response.status_code == 200, response.text
    reranked = response.json()["queries"][0]["results"]
    gallery = open_gallery(index_dir)
    vector = np.asarray(gallery.index.reconstruct(4), dtype=np.float32)[None]
    scores, ids = rerank_search(vector, gallery, 5, "aqe:n=2,alpha=3")
    assert [h["id"] for h in reranked] == ids[0].tolist()
    assert [h["score"] for h in reranked] == pytest.approx(scores[0].tolist(), abs=1e-5)
    assert [h["id"] for h in plain] != [h["id"] for h in reranked] or plain[0]["score"] != reranked[0]["score"]


def test_server_default_rerank_applies_unless_a_request_says_none(client_for, index_dir):
    client = client_for(index_dir, rerank="kreciprocal:k1=4,k2=2,lambda=0.3,candidates=8")
    default = client.get("/items/4/neighbours", params={"k": 5}).json()["queries"][0]["results"]
    named = client.get("/items/4/neighbours", params={"k": 5, "rerank": "kreciprocal:k1=4,k2=2,lambda=0.3,candidates=8"})
    assert [h["id"] for h in default] == [h["id"] for h in named.json()["queries"][0]["results"]]
    plain = client.get("/items/4/neighbours", params={"k": 5, "rerank": "none"}).json()["queries"][0]["results"]
    assert plain[0]["id"] == 4 and plain[0]["score"] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("spec, says", [("bogus", "bogus"), ("aqe:n=0", "n"), ("kreciprocal:k1=500", "k1"),
                                        ("aqe:n=2,alpha=x", "alpha"), ("dba:n=3", "DBA")])
def test_bad_or_unbounded_rerank_is_a_400_naming_it(client_for, index_dir, spec, says):
    client = client_for(index_dir)
    for response in (client.get("/items/1/neighbours", params={"rerank": spec}),
                     client.post("/search", params={"rerank": spec}, json={"embedding": [0.1] * 16})):
        assert response.status_code == 400 and says in response.json()["error"], response.text


def test_overlay_is_grad_cam_by_default_and_gates_only_when_asked(client_for, index_dir, assets):
    client = client_for(index_dir)
    gradcam, gates = client.get("/items/3/attention"), client.get("/items/3/attention", params={"kind": "gates"})
    assert gradcam.status_code == 200 and gates.status_code == 200
    a, b = (np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"), dtype=float) for r in (gradcam, gates))
    assert a.shape == b.shape and a.shape[0] > a.shape[1]  # the picture and its legend strip under it
    assert np.abs(a - b).mean() > 1  # two different maps
    bad = client.get("/items/3/attention", params={"kind": "where"})
    assert bad.status_code == 422 and set(bad.json()) == {"error"}


def test_gates_of_a_model_without_attention_are_refused_naming_the_alternative():
    import torch

    from retrieval.config import load_config
    from retrieval.models import build_model
    from retrieval.viz.overlay import map_of

    cfg = load_config(None, ["model.backbone=resnet18", "model.attention=none", "model.embedding_dim=16"])
    model = build_model(cfg.model, 0).eval()
    with pytest.raises(ValueError, match="no spatial attention gate.*gradcam"):
        map_of(model, torch.zeros(3, 32, 32), "gates")
    assert map_of(model, torch.rand(3, 32, 32), "gradcam").shape == (2, 2)  # last stage at stride 16
