"""The HTTP API through FastAPI's test client: every endpoint, every bad input, writes that persist."""
import io
import threading

import numpy as np
import pytest
from PIL import Image

from retrieval.index import load_index
from retrieval.serve import MicroBatcher
from retrieval.viz.overlay import LEGEND_HEIGHT

from .conftest import png_bytes


def upload(*paths_or_bytes):
    files = []
    for i, item in enumerate(paths_or_bytes):
        data = item.read_bytes() if hasattr(item, "read_bytes") else item
        files.append(("images", (f"q{i}.png", data, "image/png")))
    return files


def test_read_endpoints(client_for, index_dir, assets):
    client = client_for(index_dir)
    assert client.get("/healthz").json() == {"status": "ok", "count": 9}
    stats = client.get("/stats").json()
    assert stats["count"] == 9 and stats["dim"] == 16 and stats["index_type"] == "Flat"
    assert len(stats["checkpoint_sha256"]) == 64
    listing = client.get("/items", params={"limit": 4}).json()
    assert listing["total"] == 9 and [i["id"] for i in listing["items"]] == [0, 1, 2, 3]
    item = client.get("/items/4").json()
    assert item["path"] == assets["paths"][4].name and item["label"] == "class1"  # no server paths by default
    assert client.get("/items/4/image").content == assets["paths"][4].read_bytes()
    hits = client.get("/items/4/neighbours", params={"k": 3}).json()["queries"][0]["results"]
    assert hits[0]["id"] == 4 and hits[0]["score"] == pytest.approx(1.0, abs=1e-4) and len(hits) == 3
    page = client.get("/")
    assert page.status_code == 200 and "retrieval-serve" in page.text and "/static/app.js" in page.text
    assert "/search" in client.get("/static/app.js").text
    assert "/search" in client.get("/openapi.json").json()["paths"]


def test_search_by_upload_and_by_embedding(client_for, index_dir, assets):
    client = client_for(index_dir)
    response = client.post("/search", params={"k": 2}, files=upload(assets["paths"][7], assets["paths"][2]))
    assert response.status_code == 200, response.text
    queries = response.json()["queries"]
    assert [q["results"][0]["id"] for q in queries] == [7, 2]
    assert [q["query"] for q in queries] == ["q0.png", "q1.png"]
    vector = np.load(index_dir / "embeddings.npy")[5] if (index_dir / "embeddings.npy").exists() else None
    if vector is None:
        index, _, _ = load_index(index_dir)
        vector = index.reconstruct(5)
    by_vector = client.post("/search", json={"embedding": (3 * vector).tolist(), "k": 1}).json()  # any scale
    assert by_vector["queries"][0]["results"][0]["id"] == 5


def test_a_search_says_where_its_time_went_in_server_timing(client_for, index_dir, assets):
    from retrieval.serve.timing import parse_server_timing

    client = client_for(index_dir)
    response = client.post("/search", params={"k": 2}, files=upload(assets["paths"][1]))
    stages = parse_server_timing(response.headers["server-timing"])
    assert list(stages) == ["parse", "decode", "transform", "forward", "batcher", "search", "json"]
    assert all(ms >= 0 for ms in stages.values()) and stages["forward"] > 0  # a forward pass takes time
    by_vector = client.post("/search", json={"embedding": [1.0] * 16, "k": 1})
    assert list(parse_server_timing(by_vector.headers["server-timing"])) == ["parse", "search", "json"]
    assert parse_server_timing("a;dur=1.5, b;desc=x, a;dur=0.5") == {"a": 2.0}


def test_attention_pictures_are_pngs(client_for, index_dir, assets):
    client = client_for(index_dir)
    for response in (client.get("/items/3/attention"), client.post("/attention", files=upload(assets["paths"][3]))):
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(response.content)).size == (224, 224 + LEGEND_HEIGHT)  # picture + legend


def _truncated(path) -> bytes:
    return path.read_bytes()[:60]


BAD = [
    ("not an image", lambda a: dict(files=[("images", ("x.png", b"hello world", "image/png"))]), 400, "not an image"),
    ("truncated", lambda a: dict(files=[("images", ("t.png", _truncated(a["paths"][0]), "image/png"))]), 400,
     "truncated"),
    ("empty file", lambda a: dict(files=[("images", ("e.png", b"", "image/png"))]), 400, "empty"),
    ("wrong part type", lambda a: dict(files=[("images", ("x.txt", b"hello", "text/plain"))]), 415, "not an image"),
    ("wrong body type", lambda a: dict(content=b"hello", headers={"content-type": "text/plain"}), 415, "multipart"),
    ("no files", lambda a: dict(files={"k": (None, "5")}), 422, "images"),
    ("bad json", lambda a: dict(content=b"{nope", headers={"content-type": "application/json"}), 422, "embedding"),
    ("wrong dim", lambda a: dict(json={"embedding": [0.1, 0.2]}), 400, "expected 16 numbers"),
    ("zero vector", lambda a: dict(json={"embedding": [0.0] * 16}), 400, "non-zero"),
]


@pytest.mark.parametrize("name, request_kw, status, words", BAD, ids=[b[0] for b in BAD])
def test_bad_search_input_is_a_json_4xx_and_the_server_goes_on(client_for, index_dir, assets, name, request_kw,
                                                                status, words):
    client = client_for(index_dir)
    response = client.post("/search", **request_kw(assets))
    assert response.status_code == status, response.text
    assert words in response.json()["error"] and "Traceback" not in response.text
    assert client.get("/healthz").status_code == 200


def test_limits_unknown_ids_and_k(client_for, index_dir, assets):
    client = client_for(index_dir, max_upload_bytes=2000, max_pixels=1000, max_k=50)
    big = client.post("/search", files=upload(png_bytes(size=(200, 200)) + b"\0" * 3000))
    assert big.status_code == 413 and "upload limit" in big.json()["error"]
    bomb = client.post("/search", files=upload(png_bytes(size=(40, 40))))  # 1,600 pixels > 1,000 allowed
    assert bomb.status_code == 400 and "decompression-bomb guard" in bomb.json()["error"]
    for url in ("/items/99", "/items/99/image", "/items/99/neighbours", "/items/-1", "/items/99/attention"):
        response = client.get(url)
        assert response.status_code == 404 and "no item with id" in response.json()["error"], url
    assert client.get("/items/abc").status_code == 422
    for k in (0, -3, 51):
        response = client.get("/items/1/neighbours", params={"k": k})
        assert response.status_code == 422 and "k:" in response.json()["error"]
    assert client.delete("/items/99").status_code == 404
    assert client.get("/healthz").status_code == 200


def test_add_search_delete_and_restart(client_for, index_dir, assets, tmp_path):
    client = client_for(index_dir)
    red = png_bytes((250, 5, 5), (48, 48))
    added = client.post("/items", files=upload(red), data={"labels": ["red"]})
    assert added.status_code == 201, added.text
    (new_id,) = added.json()["ids"]
    assert new_id == 9 and client.get("/healthz").json()["count"] == 10
    hit = client.post("/search", params={"k": 1}, files=upload(red)).json()["queries"][0]["results"][0]
    assert hit["id"] == new_id and hit["label"] == "red" and hit["score"] == pytest.approx(1, abs=1e-4)
    assert client.get(f"/items/{new_id}/image").content == red  # kept beside the index, by content hash
    assert client.delete("/items/2").json() == {"removed": 2}
    assert client.get("/items/2").status_code == 404 and client.get("/healthz").json()["count"] == 9
    results = client.get("/items/1/neighbours", params={"k": 9}).json()["queries"][0]["results"]
    assert 2 not in [r["id"] for r in results] and len(results) == 9
    restarted = client_for(index_dir)  # a new process would load the same folder
    assert restarted.get(f"/items/{new_id}").json()["label"] == "red"
    assert restarted.get("/items/2").status_code == 404 and restarted.get("/healthz").json()["count"] == 9


def test_labels_must_match_the_images(client_for, index_dir):
    client = client_for(index_dir)
    response = client.post("/items", files=upload(png_bytes(), png_bytes((1, 2, 3))), data={"labels": ["a"]})
    assert response.status_code == 422 and "1 labels for 2 images" in response.json()["error"]
    assert client.get("/healthz").json()["count"] == 9


def test_write_endpoints_need_the_token_when_one_is_set(client_for, index_dir):
    client = client_for(index_dir, token="s3cret-token-of-20chars")
    assert client.post("/items", files=upload(png_bytes())).status_code == 401
    wrong = client.delete("/items/1", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "Bearer" in wrong.json()["error"]
    ok = client.delete("/items/1", headers={"Authorization": "Bearer s3cret-token-of-20chars"})
    assert ok.status_code == 200
    assert client.get("/items/3").status_code == 200  # reads need no token
    assert "access-control-allow-origin" not in client.get("/healthz", headers={"Origin": "http://x"}).headers


def test_searches_during_writes_never_fail(client_for, index_dir, assets):
    client = client_for(index_dir)
    errors, counts = [], []

    def searcher():
        for _ in range(15):
            response = client.get("/items/0/neighbours", params={"k": 5})
            if response.status_code != 200:
                errors.append(response.text)

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(4):
        assert client.post("/items", files=upload(png_bytes((10 * i, 100, 200)))).status_code == 201
        counts.append(client.get("/healthz").json()["count"])
    assert client.delete("/items/9").status_code == 200
    for t in threads:
        t.join()
    assert not errors and counts == [10, 11, 12, 13] and client.get("/healthz").json()["count"] == 12
    assert load_index(index_dir)[0].ntotal == 13


def test_concurrent_requests_share_forward_passes():
    calls = []

    def forward(images):
        calls.append(len(images))
        return images.flatten(1)[:, :4].numpy()

    import torch

    batcher = MicroBatcher(forward, max_batch=8, max_wait_ms=200)
    futures = [batcher.submit(torch.full((1, 3, 2, 2), float(i))) for i in range(8)]
    results = [f.result(timeout=10) for f in futures]
    batcher.close()
    assert [float(r[0, 0]) for r in results] == [float(i) for i in range(8)]  # each gets its own rows back
    assert sum(calls) == 8 and len(calls) < 8  # fewer forward passes than requests


def test_a_failing_forward_pass_fails_only_its_requests():
    import torch

    def forward(images):
        if (images < 0).any():
            raise RuntimeError("bad batch")
        return images.flatten(1).numpy()

    batcher = MicroBatcher(forward, max_batch=1, max_wait_ms=0)
    with pytest.raises(RuntimeError, match="bad batch"):
        batcher.submit(-torch.ones(1, 1, 1, 1)).result(timeout=10)
    assert batcher.submit(torch.ones(1, 1, 1, 1)).result(timeout=10).shape == (1, 1)
    batcher.close()


def test_calls_run_on_the_batcher_thread_between_forward_passes():
    """MicroBatcher.call: the function runs on the batcher's thread (the service's one PyTorch thread),
    its value or its error reaches the caller, and a call queued behind a batch does not break it."""

    import torch

    seen = []

    def forward(images):
        seen.append(("forward", threading.current_thread().name, len(images)))
        return images.flatten(1).numpy()

    def call(x):
        seen.append(("call", threading.current_thread().name, x))
        if x < 0:
            raise ValueError("negative")
        return 2 * x

    batcher = MicroBatcher(forward, max_batch=4, max_wait_ms=300)
    first = batcher.submit(torch.zeros(1, 1, 1, 1))  # opens a batch that waits 300 ms for more
    called = batcher.call(call, 21)
    second = batcher.submit(torch.ones(1, 1, 1, 1))
    assert called.result(timeout=10) == 42
    assert first.result(timeout=10).shape == second.result(timeout=10).shape == (1, 1)
    with pytest.raises(ValueError, match="negative"):
        batcher.call(call, -1).result(timeout=10)
    batcher.close()
    assert {name for _, name, _ in seen} == {"retrieval-batcher"}
    forwards = [n for kind, _, n in seen if kind == "forward"]
    assert forwards == [2] and seen.index(("call", "retrieval-batcher", 21)) == 1  # the call ran after the batch


def test_the_service_runs_every_forward_pass_on_the_batcher_thread(client_for, index_dir, assets):
    """Request threads decode and transform with Pillow and numpy; the network (search, add, explain,
    attention) runs on the batcher's thread only, so one OpenMP team serves the process (serve/batcher.py)."""

    import torch

    client = client_for(index_dir)
    service = client.app.state.service
    threads = []
    stem = next(m for m in service.embedder.model.modules() if isinstance(m, torch.nn.Conv2d))  # every pass starts here
    handle = stem.register_forward_pre_hook(lambda module, args: threads.append(threading.current_thread().name))
    try:
        assert client.post("/search", files=upload(assets["paths"][1])).status_code == 200
        assert client.post("/items", files=upload(assets["paths"][2])).status_code == 201
        assert client.get("/items/5/explain", params={"query_item": 2}).status_code == 200
        assert client.get("/items/3/attention").status_code == 200
    finally:
        handle.remove()
    assert len(threads) >= 4 and set(threads) == {"retrieval-batcher"}
    # the numpy transform is the checkpoint's torchvision test transform
    picture = Image.open(assets["paths"][4]).convert("RGB")
    expected = service.embedder.transform(picture)
    torch.testing.assert_close(service.preprocess(picture), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(service.batch([picture, picture]), torch.stack([expected, expected]), atol=1e-6, rtol=0)


def test_neighbours_work_once_faiss_torch_utils_is_imported(client_for, index_dir):
    import faiss.contrib.torch_utils  # noqa: F401  (pytorch-metric-learning imports it; it patches FAISS globally)

    hits = client_for(index_dir).get("/items/4/neighbours", params={"k": 2}).json()["queries"][0]["results"]
    assert hits[0]["id"] == 4


def test_search_through_onnxruntime_matches_torch(client_for, index_dir, assets, caplog):
    """--runtime onnxruntime: the service exports the network at start-up and answers like the torch runtime."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    files = upload(assets["paths"][7], assets["paths"][2])
    torch_hits = client_for(index_dir).post("/search", params={"k": 3}, files=files).json()["queries"]
    with caplog.at_level("INFO", logger="retrieval.execution"):
        onnx_client = client_for(index_dir, runtime="onnxruntime")
    assert any("ONNX Runtime" in r.getMessage() for r in caplog.records)  # exported at start-up, not on a request
    onnx_hits = onnx_client.post("/search", params={"k": 3}, files=files).json()["queries"]
    for ours, theirs in zip(onnx_hits, torch_hits):
        assert [r["id"] for r in ours["results"]] == [r["id"] for r in theirs["results"]]
        np.testing.assert_allclose([r["score"] for r in ours["results"]], [r["score"] for r in theirs["results"]],
                                   atol=1e-4)


def test_int8_runtime_is_calibrated_on_the_gallery_at_start_up(client_for, index_dir, assets, caplog):
    """--runtime onnxruntime-int8: quantised before the first request, on the index's own images."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    files = upload(assets["paths"][7], assets["paths"][2])
    torch_client = client_for(index_dir)
    torch_hits = torch_client.post("/search", params={"k": 3}, files=files).json()["queries"]
    gallery = torch_client.get("/healthz").json()["count"]
    with caplog.at_level("INFO", logger="retrieval.execution"):
        int8_client = client_for(index_dir, runtime="onnxruntime-int8")
    quantised = [r.getMessage() for r in caplog.records if "quantised the network to int8" in r.getMessage()]
    assert len(quantised) == 1 and f"on {min(gallery, 64)} calibration images" in quantised[0], quantised
    int8_hits = int8_client.post("/search", params={"k": 3}, files=files).json()["queries"]
    for ours, theirs in zip(int8_hits, torch_hits):  # gallery images find themselves first, as with torch
        assert ours["results"][0]["id"] == theirs["results"][0]["id"]
        assert abs(ours["results"][0]["score"] - theirs["results"][0]["score"]) < 0.02
