"""Exact search over stored embeddings, k-NN recall, and the index-vs-exact comparison, against brute-force numpy."""
import numpy as np
import pandas as pd
import pytest

import faiss

from retrieval.approximation import compare_with_exact, index_vs_exact, sample_rows
from retrieval.errors import IndexFormatError
from retrieval.gallery import open_gallery
from retrieval.index import build_index, remove_entries
from retrieval.index.exact import exact_search, is_exact, knn_recall, stored_embeddings
from retrieval.metrics import metrics_from_neighbours, retrieval_metrics, sort_ties


def _unit(n, d=16, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute_force(x, q, k, exclude=()):
    scores = q @ x.T
    scores[:, list(exclude)] = -np.inf
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # stable: ties by id, lower first
    return np.take_along_axis(scores, ids, 1), ids


@pytest.mark.parametrize("block_rows", [7, 1 << 18])  # many blocks merged, and one
def test_exact_search_is_brute_force_without_the_excluded_rows(block_rows):
    x, q = _unit(300), _unit(25, seed=1)
    x[10] = x[11]  # an exact tie: the lower id comes first
    q[0] = x[10]
    for exclude in ((), (3, 10, 299)):
        scores, ids = exact_search(x, q, 12, exclude=exclude, block_rows=block_rows)
        want_s, want_i = _brute_force(x, q, 12, exclude)
        np.testing.assert_array_equal(ids, want_i)
        np.testing.assert_allclose(scores, want_s, rtol=1e-5, atol=1e-6)
    assert exact_search(x, q, 12)[1][0, :2].tolist() == [10, 11]
    assert exact_search(x[:5], q, 12, exclude=[0])[1].shape == (25, 4)  # k clamped to the live rows


def test_knn_recall_counts_the_shared_neighbours():
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    assert knn_recall(exact, exact, 3) == 1.0
    approx = np.array([[3, 9, 1], [-1, -1, 4]])  # 2 of 3, then 1 of 3 (misses are -1)
    assert knn_recall(approx, exact, 3) == pytest.approx(0.5)
    assert knn_recall(approx, exact, 1) == 0.0  # top-1: 3 is not 1, -1 is not 4
    with pytest.raises(ValueError, match="knn_recall@4"):
        knn_recall(approx, exact, 4)


def _folder(tmp_path, factory, n=400, save=True):
    x = _unit(n, seed=2)
    labels = np.arange(n) % 20
    table = pd.DataFrame({"path": [f"/g/{i}.jpg" for i in range(n)], "label": labels})
    build_index(x, table, tmp_path / factory.replace(",", "_"), factory=factory, save_embeddings=save)
    return open_gallery(tmp_path / factory.replace(",", "_")), x, labels


def test_stored_embeddings_are_checked_against_the_manifest(tmp_path):
    gallery, x, _ = _folder(tmp_path, "Flat", n=50)
    assert is_exact(gallery.index)
    np.testing.assert_array_equal(stored_embeddings(gallery.folder, gallery.manifest), x)
    np.save(gallery.folder / "embeddings.npy", x[:49])
    with pytest.raises(IndexFormatError, match=r"embeddings.npy: float32 array of shape \(49, 16\), but the index "
                                               r"holds 50 vectors of dimension 16"):
        stored_embeddings(gallery.folder, gallery.manifest)
    (gallery.folder / "embeddings.npy").unlink()
    assert stored_embeddings(gallery.folder, gallery.manifest) is None


def test_comparison_scores_the_index_and_brute_force_on_the_same_sample(tmp_path):
    gallery, x, labels = _folder(tmp_path, "IVF8,PQ4x4", n=700)
    assert not is_exact(gallery.index)
    queries = np.clip(x[:120] + 0.3 * _unit(120, seed=3), -1, 1)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    q_labels = labels[:120]
    out = compare_with_exact(gallery, queries, q_labels, labels, ks=[1, 4], depth=20, nprobe=1, sample=50, seed=5)
    rows = sample_rows(120, 50, seed=5)
    assert out["sample"] == 50 and len(set(rows)) == 50 and (np.diff(rows) > 0).all()
    _, exact_ids = _brute_force(x, queries[rows], 20)
    assert out["exact"] == pytest.approx(metrics_from_neighbours(exact_ids, q_labels[rows], labels, ks=[1, 4]))
    _, index_ids = gallery.search(queries[rows], 20, nprobe=1)
    assert out["index"] == pytest.approx(metrics_from_neighbours(index_ids, q_labels[rows], labels, ks=[1, 4]))
    assert out["knn_recall"]["knn_recall@4"] == pytest.approx(knn_recall(index_ids, exact_ids, 4))
    assert out["knn_recall"]["knn_recall@4"] < 0.9  # 2-byte codes (4 x 4 bits), one list of 8: far from exact
    assert set(out["ms_per_query"]) == {"index", "exact"}


def test_an_ivf_flat_index_visiting_every_list_is_exact_and_removed_entries_stay_out(tmp_path):
    gallery, x, labels = _folder(tmp_path, "IVF4,Flat")
    remove_entries(gallery.folder, [0, 5])
    gallery = open_gallery(gallery.folder)
    out = compare_with_exact(gallery, x[:40], labels[:40], labels, ks=[1, 10], depth=10, nprobe=4, sample=40)
    assert out["knn_recall"] == {"knn_recall@1": 1.0, "knn_recall@10": 1.0}
    assert out["index"] == out["exact"]
    exact = exact_search(stored_embeddings(gallery.folder, gallery.manifest), x[:1], 3, exclude=gallery.removed_ids)
    assert 0 not in exact[1]  # the removed entry 0 does not find itself


def test_no_comparison_without_stored_embeddings(tmp_path):
    gallery, x, labels = _folder(tmp_path, "IVF4,Flat", save=False)
    assert compare_with_exact(gallery, x[:5], labels[:5], labels, ks=[1], depth=1) is None


def test_leave_one_out_through_an_index_against_the_exact_metrics():
    x, labels = _unit(700, seed=7), np.arange(700) % 20
    full = index_vs_exact(x, labels, "IVF4,Flat", ks=[1, 4], nprobe=4)  # every list: exact
    assert full["exact"] == pytest.approx(retrieval_metrics(x, labels, ks=[1, 4]))  # the metrics' own reference
    assert full["index"] == pytest.approx(full["exact"]) and full["knn_recall"]["knn_recall@4"] == 1.0
    coarse = index_vs_exact(x, labels, "IVF8,PQ4x4", ks=[1, 4], nprobe=1)
    index = faiss.index_factory(16, "IVF8,PQ4x4", faiss.METRIC_INNER_PRODUCT)  # the same index by hand
    index.train(x)
    index.add(x)
    index.nprobe = 1
    scores, ids = index.search(x, 36)  # depth 35 (the class size) + the query itself
    sort_ties(scores, ids)  # 2-byte codes tie often: the project ranks ties by id
    own = ids == np.arange(700)[:, None]
    ids = np.array([row[~mask][:35] if mask.any() else row[:35] for row, mask in zip(ids, own)])
    assert coarse["index"] == pytest.approx(metrics_from_neighbours(ids, labels, labels, ks=[1, 4], leave_one_out=True))
    assert coarse["knn_recall"]["knn_recall@4"] < 0.9
    assert coarse["index_setting"] == "IVF8,PQ4x4, nprobe 1" and coarse["queries"] == 700
