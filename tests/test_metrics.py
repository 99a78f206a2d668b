"""Recall@K, MAP@R, R-precision: against a brute-force numpy reference and pytorch-metric-learning."""
import logging
import math
import re

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from retrieval import metrics as M
from retrieval.metrics import retrieval_metrics


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(q, ql, g=None, gl=None, ks=(1, 2, 4, 8)):
    """Reference: full similarity matrix, stable sort (ties → lower gallery index), python loops."""
    loo = g is None
    if loo:
        g, gl = q, ql
    sims = q.astype(np.float64) @ g.astype(np.float64).T
    recall = {k: [] for k in ks}
    maps, rps = [], []
    for i in range(len(q)):
        order = np.argsort(-sims[i], kind="stable")
        if loo:
            order = order[order != i]
        rel = gl[order] == ql[i]
        r = int(rel.sum())
        if r == 0:
            continue  # lone query: left out (as AccuracyCalculator)
        for k in ks:
            recall[k].append(rel[:k].any())
        precisions = [rel[:j + 1].sum() / (j + 1) for j in range(r) if rel[j]]
        maps.append(sum(precisions) / r)
        rps.append(rel[:r].sum() / r)
    out = {f"recall@{k}": float(np.mean(recall[k])) for k in ks}
    out.update({"map@r": float(np.mean(maps)), "r_precision": float(np.mean(rps))})
    return out


def pml(q, ql, g=None, gl=None):
    calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r", "r_precision"),
                              k="max_bin_count", device=torch.device("cpu"))
    if g is None:
        return calc.get_accuracy(torch.from_numpy(q), torch.from_numpy(ql))
    return calc.get_accuracy(torch.from_numpy(q), torch.from_numpy(ql), torch.from_numpy(g),
                             torch.from_numpy(gl), ref_includes_query=False)


def assert_close(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=1e-9), key


@pytest.mark.parametrize("seed", range(4))
def test_leave_one_out_matches_brute_force_and_pml(seed):
    rng = np.random.default_rng(seed)
    n, d, classes = 300, 8, 25  # low dimension so rankings are far from trivial
    x = unit(rng, n, d)
    y = rng.integers(0, classes, n)
    ks = (1, 2, 4, 8, 16)
    got = retrieval_metrics(x, y, ks=ks, chunk_size=64)
    assert_close(got, brute_force(x, y, ks=ks))
    ref = pml(x, y)
    assert got["recall@1"] == pytest.approx(ref["precision_at_1"], abs=1e-6)
    assert got["map@r"] == pytest.approx(ref["mean_average_precision_at_r"], abs=1e-6)
    assert got["r_precision"] == pytest.approx(ref["r_precision"], abs=1e-6)
    assert 0 < got["map@r"] < got["recall@16"] < 1  # a case where the metrics are not trivial


@pytest.mark.parametrize("seed", range(3))
def test_query_gallery_matches_brute_force_and_pml(seed):
    rng = np.random.default_rng(100 + seed)
    q, g = unit(rng, 150, 6), unit(rng, 400, 6)
    ql, gl = rng.integers(0, 30, 150), rng.integers(0, 30, 400)
    ks = (1, 10, 20, 30)
    got = retrieval_metrics(q, ql, g, gl, ks=ks, chunk_size=50)
    assert_close(got, brute_force(q, ql, g, gl, ks=ks))
    ref = pml(q, ql, g, gl)
    assert got["recall@1"] == pytest.approx(ref["precision_at_1"], abs=1e-6)
    assert got["map@r"] == pytest.approx(ref["mean_average_precision_at_r"], abs=1e-6)
    assert got["r_precision"] == pytest.approx(ref["r_precision"], abs=1e-6)


def test_lone_queries_are_left_out_like_accuracy_calculator(caplog):
    rng = np.random.default_rng(7)
    x = unit(rng, 120, 8)
    y = rng.integers(0, 20, 120)
    y[:5] = 100 + np.arange(5)  # five singleton classes
    with caplog.at_level(logging.INFO, logger="retrieval.metrics"):
        got = retrieval_metrics(x, y)
    assert "metrics: 5 of 120 queries" in caplog.text
    assert_close(got, brute_force(x, y))
    ref = pml(x, y)
    assert got["recall@1"] == pytest.approx(ref["precision_at_1"], abs=1e-6)
    assert got["map@r"] == pytest.approx(ref["mean_average_precision_at_r"], abs=1e-6)
    # Recall@8 is the hit rate of the 115 queries that have a match; counting the 5 lone ones as misses
    # (the mean over all 120) would give 115/120 of it
    sims = x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(sims, -np.inf)
    hits = (y[np.argsort(-sims, axis=1, kind="stable")[:, :8]] == y[:, None]).any(axis=1)
    assert not hits[:5].any() and 0.1 < hits[5:].mean() < 0.9
    assert got["recall@8"] == pytest.approx(hits[5:].mean(), abs=1e-12)
    assert got["recall@8"] != pytest.approx(hits.mean(), abs=1e-3)


def test_query_class_absent_from_gallery_is_left_out():
    rng = np.random.default_rng(3)
    g, gl = unit(rng, 50, 4), np.repeat(np.arange(5), 10)
    q = unit(rng, 4, 4)
    got = retrieval_metrics(q, np.array([0, 1, 99, 98]), g, gl, ks=(1, 50))
    assert_close(got, brute_force(q, np.array([0, 1, 99, 98]), g, gl, ks=(1, 50)))
    assert got["recall@50"] == 1.0


def test_all_queries_lone_gives_nan(caplog):
    x = unit(np.random.default_rng(0), 6, 4)
    got = retrieval_metrics(x, np.arange(6))
    assert list(got) == ["recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision"]
    assert all(math.isnan(v) for v in got.values())
    assert "no query" in caplog.text


def test_ties_are_ranked_by_gallery_index():
    rng = np.random.default_rng(0)
    q = unit(rng, 1, 16)
    others = unit(rng, 5, 16)
    # two exact copies of the query, of different classes: the lower gallery index wins the tie
    g = np.concatenate([q, q, others])
    assert retrieval_metrics(q, [1], g, [1, 2, 3, 3, 3, 3, 3], ks=(1, 2))["recall@1"] == 1.0
    assert retrieval_metrics(q, [1], g, [2, 1, 3, 3, 3, 3, 3], ks=(1, 2))["recall@1"] == 0.0
    got = retrieval_metrics(q, [1], g, [2, 1, 3, 3, 3, 3, 3], ks=(1, 2))
    assert got["recall@2"] == 1.0 and got["map@r"] == 0.0 and got["r_precision"] == 0.0  # R = 1, rank 1 wrong


def test_leave_one_out_removes_the_query_not_its_duplicate():
    rng = np.random.default_rng(1)
    x = unit(rng, 10, 8)
    x[7] = x[2]  # exact duplicate, same class: a genuine neighbour at similarity 1
    y = np.arange(10)
    y[7] = 2
    got = retrieval_metrics(x, y, ks=(1,))
    assert got == {"recall@1": 1.0, "map@r": 1.0, "r_precision": 1.0}  # only class 2 has R > 0
    many = np.repeat(x[:1], 6, axis=0)  # every item identical: self must still be removed
    labels = np.array([0, 0, 0, 1, 1, 1])
    got = retrieval_metrics(many, labels, ks=(1, 2))
    assert_close(got, brute_force(many, labels, ks=(1, 2)))
    assert got["recall@1"] == 0.5  # ties → lower index: items 3-5 see 0, 1 first (their own row is skipped)


def test_k_larger_than_gallery_is_clamped_with_warning(caplog):
    rng = np.random.default_rng(2)
    x, y = unit(rng, 20, 4), np.repeat(np.arange(4), 5)
    with caplog.at_level(logging.WARNING, logger="retrieval.metrics"):
        got = retrieval_metrics(x, y, ks=(1, 19, 1000))
    assert "K=1000" in caplog.text and "clamped to 19" in caplog.text
    assert got["recall@1000"] == got["recall@19"] == 1.0
    q = unit(rng, 3, 4)
    got = retrieval_metrics(q, [0, 1, 2], x, y, ks=(20, 21))
    assert got["recall@21"] == got["recall@20"] == 1.0


def test_chunks_bound_the_search_and_do_not_change_results(monkeypatch):
    rng = np.random.default_rng(5)
    x, y = unit(rng, 200, 8), rng.integers(0, 15, 200)
    full = retrieval_metrics(x, y, chunk_size=10_000)
    seen = []
    real_knn = M.faiss.knn

    def spy(xq, xb, k, metric):
        seen.append(xq.shape[0])
        return real_knn(xq, xb, k, metric=metric)

    monkeypatch.setattr(M.faiss, "knn", spy)
    assert retrieval_metrics(x, y, chunk_size=7) == pytest.approx(full)
    assert max(seen) == 7 and sum(seen) == 200


def test_map_at_r_can_be_skipped():
    rng = np.random.default_rng(5)
    x, y = unit(rng, 50, 8), rng.integers(0, 5, 50)
    assert set(retrieval_metrics(x, y, ks=(1, 5), map_at_r=False)) == {"recall@1", "recall@5"}


def test_perfect_embedding_scores_one():
    y = np.repeat(np.arange(4), 3)
    centres = np.eye(4, 8, dtype=np.float32)
    x = centres[y] + 0.01 * np.random.default_rng(0).standard_normal((12, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert retrieval_metrics(x, y) == pytest.approx(
        {"recall@1": 1, "recall@2": 1, "recall@4": 1, "recall@8": 1, "map@r": 1, "r_precision": 1})


@pytest.mark.parametrize("call, message", [
    (lambda x, y: retrieval_metrics(x[0], y), "query: expected a non-empty (N, D) array"),
    (lambda x, y: retrieval_metrics(x, y[:-1]), "query_labels: expected 10 labels"),
    (lambda x, y: retrieval_metrics(x, y.astype(float)), "query_labels: expected integer labels"),
    (lambda x, y: retrieval_metrics(x, y, x[:, :4], y), "dimension"),
    (lambda x, y: retrieval_metrics(x, y, x[0], y), "gallery: expected a non-empty (N, D) array"),
    (lambda x, y: retrieval_metrics(x, y, x, y[:-1]), "gallery_labels: expected 10 labels"),
    (lambda x, y: retrieval_metrics(x, y, ks=(0,)), "K values >= 1"),
    (lambda x, y: retrieval_metrics(x * np.nan, y), "NaN"),
    (lambda x, y: retrieval_metrics(x, y, chunk_size=0), "chunk_size: expected >= 1, got 0"),
    (lambda x, y: M.metrics_from_neighbours(np.zeros((10, 2), int), y[:-1], y), "query_labels: expected 10 labels"),
    (lambda x, y: M.metrics_from_neighbours(np.full((10, 2), 10), y, y), "neighbour_ids: expected (Nq, K) rows of ids < 10"),
    (lambda x, y: M.metrics_from_neighbours(np.zeros(10, int), y, y), "neighbour_ids: expected (Nq, K)"),
])
def test_bad_input_is_named(call, message):
    x, y = unit(np.random.default_rng(0), 10, 8), np.repeat(np.arange(5), 2)
    with pytest.raises(ValueError, match=re.escape(message)):
        call(x, y)


def test_chunk_size_one_and_a_gallery_of_one():
    rng = np.random.default_rng(4)
    x, y = unit(rng, 30, 8), rng.integers(0, 6, 30)
    assert retrieval_metrics(x, y, chunk_size=1) == pytest.approx(retrieval_metrics(x, y))
    pair = unit(rng, 2, 8)  # leave-one-out on two items: each one's gallery is the other
    assert retrieval_metrics(pair, [3, 3], ks=(1,)) == {"recall@1": 1.0, "map@r": 1.0, "r_precision": 1.0}
    assert retrieval_metrics(pair, [3, 4], ks=(1,), map_at_r=False) == {"recall@1": pytest.approx(math.nan,
                                                                                               nan_ok=True)}


@pytest.mark.parametrize("map_at_r", [True, False])
def test_a_gallery_of_nothing_gives_nan_for_the_requested_keys(caplog, map_at_r):
    got = retrieval_metrics(unit(np.random.default_rng(0), 1, 4), [0], ks=(1, 3), map_at_r=map_at_r)
    keys = ["recall@1", "recall@3"] + (["map@r", "r_precision"] if map_at_r else [])
    assert list(got) == keys and all(math.isnan(v) for v in got.values())
    assert "the gallery is empty" in caplog.text


def test_skipping_map_at_r_keeps_the_recalls():
    rng = np.random.default_rng(8)
    x, y = unit(rng, 80, 8), rng.integers(0, 6, 80)
    full = retrieval_metrics(x, y, ks=(1, 5))
    assert retrieval_metrics(x, y, ks=(1, 5), map_at_r=False) == {k: full[k] for k in ("recall@1", "recall@5")}
    ids = M.faiss.knn(x, x, 3, metric=M.faiss.METRIC_INNER_PRODUCT)[1]
    assert list(M.metrics_from_neighbours(ids, y, y, ks=(2,), map_at_r=False)) == ["recall@2"]


def test_sort_ties_orders_equal_scores_by_id_and_leaves_the_rest():
    rng = np.random.default_rng(9)
    scores = rng.integers(0, 4, (50, 6)).astype(np.float32)  # many ties, in every row position
    scores = -np.sort(-scores, axis=1)  # rows best first, as FAISS returns them
    scores[::7] = np.arange(6, 0, -1)  # some rows without ties
    ids = np.stack([rng.permutation(20)[:6] for _ in range(50)])
    got_s, got_i = scores.copy(), ids.copy()
    M.sort_ties(got_s, got_i)
    for row in range(50):
        order = sorted(range(6), key=lambda j: (-scores[row, j], ids[row, j]))  # the reference: (score desc, id)
        assert got_i[row].tolist() == ids[row, order].tolist(), row
        assert got_s[row].tolist() == scores[row, order].tolist(), row


def test_drop_self_removes_the_own_row_or_else_the_last():
    ids = np.array([[4, 0, 7], [0, 4, 7], [1, 2, 0], [5, 6, 8], [3, 3, 9]])
    self_ids = np.array([0, 1, 2, 3, 4])
    # own id at position 1 in rows 0 and 2; absent (so the last is dropped) in rows 1, 3 and 4
    want = [[4, 7], [0, 4], [1, 0], [5, 6], [3, 3]]
    assert M.drop_self(ids, self_ids).tolist() == want
    first = np.array([[2, 5, 1], [9, 1, 3]])
    assert M.drop_self(first, np.array([2, 3])).tolist() == [[5, 1], [9, 1]]  # own id first; own id last


def test_neighbour_lists_shorter_than_r_are_padded_with_misses():
    # 3 items of class 0 in the gallery (R = 3) but only 2 neighbours per query (an approximate index's K)
    gallery_labels = np.array([0, 0, 0, 1, 1])
    ids = np.array([[0, 3], [3, 1], [-1, -1]])
    got = M.metrics_from_neighbours(ids, [0, 0, 0], gallery_labels, ks=(1, 4))
    # by hand: P(i)·rel(i) summed over the first R=3 ranks, / R; the missing third rank is a miss
    assert got["recall@1"] == pytest.approx(1 / 3) and got["recall@4"] == pytest.approx(2 / 3)
    assert got["map@r"] == pytest.approx((1 / 1 + (1 / 2)) / 3 / 3)
    assert got["r_precision"] == pytest.approx((1 / 3 + 1 / 3 + 0) / 3)
    assert M.metrics_from_neighbours(ids, [0, 0, 0], gallery_labels, ks=(1,)) == pytest.approx(
        {"recall@1": 1 / 3, "map@r": got["map@r"], "r_precision": got["r_precision"]})  # K=1 < R: padded to R


def test_a_large_k_shrinks_the_query_chunks(monkeypatch):
    rng = np.random.default_rng(6)
    x, y = unit(rng, 40, 8), rng.integers(0, 4, 40)
    full = retrieval_metrics(x, y)
    monkeypatch.setattr(M, "_MAX_BLOCK", 50)  # K = the largest R here (about 12): 4 queries per chunk
    assert retrieval_metrics(x, y) == pytest.approx(full)


def test_metrics_from_neighbours_matches_exact_search_and_counts_missing_as_misses():
    from retrieval.metrics import metrics_from_neighbours

    rng = np.random.default_rng(11)
    q, g = unit(rng, 60, 6), unit(rng, 200, 6)
    ql, gl = rng.integers(0, 12, 60), rng.integers(0, 12, 200)
    k = int(np.bincount(gl).max())
    exact = retrieval_metrics(q, ql, g, gl, ks=(1, 5))
    _, ids = M.faiss.knn(q, g, k, metric=M.faiss.METRIC_INNER_PRODUCT)
    assert metrics_from_neighbours(ids, ql, gl, ks=(1, 5)) == pytest.approx(exact)
    ids[:, 0] = -1  # an approximate index that found nothing at rank 1
    missing = metrics_from_neighbours(ids, ql, gl, ks=(1, 5))
    assert missing["recall@1"] == 0 and missing["recall@5"] <= exact["recall@5"]
