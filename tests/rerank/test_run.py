"""rerank_search over arrays and index folders, leave-one-out exclusion, and the plain/re-ranked comparison."""
import numpy as np
import pandas as pd
import pytest

from retrieval.errors import IndexFormatError
from retrieval.gallery import open_gallery
from retrieval.index import build_index
from retrieval.rerank import GalleryAccess, parse_rerank, plain_vs_reranked, rerank_search

from .conftest import clustered

SPECS = ["none", "aqe:n=3", "dba:n=3", "dba_aqe:n=2,dba_n=3", "kreciprocal:k1=10,k2=3,lambda=0.3,candidates=40"]


@pytest.mark.parametrize("spec", SPECS)
def test_leave_one_out_never_returns_the_query(points, spec):
    x, _ = points
    dup = np.concatenate([x, x[:5]])  # exact duplicates of the first queries: they may come back, the query may not
    scores, ids = rerank_search(dup, dup, 20, spec, self_ids=np.arange(len(dup)))
    assert ids.shape == (len(dup), 20) and (ids >= 0).all()
    assert not (ids == np.arange(len(dup))[:, None]).any()
    assert all(len(set(row)) == len(row) for row in ids)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    assert ids[:5, 0].tolist() == [200, 201, 202, 203, 204] and ids[200:, 0].tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("spec", SPECS[1:])
def test_reranking_helps_on_clusters(points, spec):
    x, labels = points
    result = plain_vs_reranked(x, labels, parse_rerank(spec), (1, 4))
    assert result["reranked"]["map@r"] > result["plain"]["map@r"]
    assert set(result["ms_per_query"]) == {"plain", "reranked"} and result["rerank"] == str(parse_rerank(spec))


def test_query_gallery_comparison(points):
    x, labels = points
    result = plain_vs_reranked(x[:50], labels[:50], parse_rerank("aqe"), (1, 2), gallery=x[50:],
                               gallery_labels=labels[50:])
    assert result["queries"] == 50 and 0 < result["plain"]["recall@1"] <= 1


def _folder(tmp_path, x, factory="Flat", save=False):
    meta = pd.DataFrame({"path": [f"{i}.png" for i in range(len(x))], "label": [str(i % 7) for i in range(len(x))]})
    build_index(x, meta, tmp_path / factory.replace(",", "_"), factory=factory, save_embeddings=save)
    return open_gallery(tmp_path / factory.replace(",", "_"))


@pytest.mark.parametrize("spec", SPECS)
def test_index_folder_equals_arrays(points, tmp_path, spec):
    x, _ = points
    gallery = _folder(tmp_path, x)
    q = x[:10]
    want = rerank_search(q, x, 5, spec)
    for where in (gallery, gallery.folder, str(gallery.folder)):
        got = rerank_search(q, where, 5, spec)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], atol=1e-5)


def test_approximate_folder_needs_embeddings(tmp_path):
    x, _ = clustered(n=400)
    with pytest.raises(IndexFormatError, match="--save-embeddings"):
        rerank_search(x[:2], _folder(tmp_path, x, "IVF4,Flat"), 5, "aqe")
    gallery = _folder(tmp_path / "saved", x, "IVF4,Flat", save=True)
    assert rerank_search(x[:2], gallery, 5, "aqe", nprobe=4)[1].shape == (2, 5)


def test_bad_inputs(points):
    x, _ = points
    with pytest.raises(ValueError, match="k: expected >= 1"):
        rerank_search(x[:2], x, 0, "aqe")
    with pytest.raises(ValueError, match="queries: expected dimension 16"):
        rerank_search(np.eye(2, 8, dtype=np.float32), x, 3, "aqe")
    with pytest.raises(ValueError, match="L2-normalised"):
        rerank_search(2 * x[:2], GalleryAccess(x), 3, "aqe")


@pytest.mark.parametrize("spec", SPECS[1:])
def test_missing_first_pass_hits_stay_missing(tmp_path, spec):
    x, _ = clustered(n=400, seed=5)
    gallery = _folder(tmp_path, x, "IVF8,Flat", save=True)
    first = rerank_search(x[:30], gallery, 120, "none", nprobe=1)[1]
    assert (first < 0).any()  # one list of eight cannot hold 120 results for every query
    scores, ids = rerank_search(x[:30], gallery, 120, spec, nprobe=1)
    for row, s in zip(ids, scores):
        found = row[row >= 0]
        assert len(set(found)) == len(found) and (row[len(found):] == -1).all()
        assert np.isfinite(s[:len(found)]).all()


def test_prepare_does_the_gallery_work_once(points, monkeypatch):
    import importlib

    from retrieval.rerank import prepare_rerank

    dba_module = importlib.import_module("retrieval.rerank.dba")  # the package's ``dba`` is the function
    x, _ = points
    access = prepare_rerank(x, "dba_aqe:dba_n=3")
    assert ("dba", 3, 3.0) in access.cache
    monkeypatch.setattr(dba_module, "augment", lambda *a, **k: pytest.fail("augmented again"))
    rerank_search(x[:5], access, 4, "dba_aqe:dba_n=3")
    assert prepare_rerank(access, "aqe") is access  # nothing to prepare
