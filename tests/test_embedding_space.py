"""Embedding-space diagnostics against brute force: mean norm, pair scores, compressed recall."""
import itertools

import numpy as np
import pytest

from retrieval.embedding_space import compressed_recall, mean_norm, pair_scores


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_mean_norm_is_one_for_a_single_direction_and_small_for_spread_vectors():
    rng = np.random.default_rng(0)
    assert mean_norm(unit(np.tile(rng.normal(size=(1, 16)), (50, 1)))) == pytest.approx(1.0, abs=1e-6)
    spread = unit(rng.normal(size=(4000, 16)))
    assert mean_norm(spread) < 0.05
    cone = unit(spread + 8.0)  # a shared offset: every vector near the diagonal direction
    assert mean_norm(cone) > 0.99


def test_pair_scores_enumerate_same_class_pairs_and_sample_different_ones():
    rng = np.random.default_rng(1)
    x, y = unit(rng.normal(size=(12, 8))), np.repeat([0, 1, 2], 4)
    same, diff = pair_scores(x, y, max_pairs=1000)
    brute_same = sorted(float(x[i] @ x[j]) for i, j in itertools.combinations(range(12), 2) if y[i] == y[j])
    np.testing.assert_allclose(sorted(same), brute_same, atol=1e-6)  # all 3 × 6 pairs, each once
    brute_diff = {round(float(x[i] @ x[j]), 5) for i in range(12) for j in range(12) if y[i] != y[j]}
    assert len(diff) == 1000 and {round(float(v), 5) for v in diff} <= brute_diff
    capped, _ = pair_scores(x, y, max_pairs=5)
    assert len(capped) == 5 and {round(float(v), 4) for v in capped} <= {round(v, 4) for v in brute_same}


def test_compressed_recall_flat_matches_brute_force_and_a_cone_breaks_pq():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(20, 32))
    y = np.repeat(np.arange(20), 30)
    x = unit(centres[y] + 0.8 * rng.normal(size=(600, 32)))
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    brute = float(np.mean(y[sims.argmax(axis=1)] == y))
    assert compressed_recall(x, y, "Flat") == pytest.approx(brute)
    cone = unit(x + 6.0 * unit(rng.normal(size=(1, 32))))  # the same neighbours, a shared direction on top
    assert mean_norm(cone) > 0.95
    spread_pq, cone_pq = compressed_recall(x, y, "PQ4"), compressed_recall(cone, y, "PQ4")
    assert spread_pq > 0.8 * brute and cone_pq < spread_pq


def test_describe_collects_the_diagnostics():
    from retrieval.embedding_space import describe

    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(10), 30)  # a PQ codebook of 256 centroids needs >= 256 training vectors
    x = unit(rng.normal(size=(10, 16))[y] + 0.5 * rng.normal(size=(300, 16)))
    got = describe(x, y, ("PQ4",))
    assert set(got) == {"mean_norm", "exact_recall@1", "pq4_recall@1", "cos_same", "cos_diff"}
    assert got["exact_recall@1"] == pytest.approx(compressed_recall(x, y, "Flat"))
    assert got["mean_norm"] == pytest.approx(mean_norm(x)) and got["cos_same"] > got["cos_diff"]


def test_too_few_vectors_for_a_codebook_is_a_clear_error_and_nan_in_describe(caplog):
    from retrieval.embedding_space import describe

    rng = np.random.default_rng(4)
    x, y = unit(rng.normal(size=(40, 16))), np.repeat(np.arange(4), 10)
    with pytest.raises(ValueError, match="PQ4: cannot be trained on 40 vectors"):
        compressed_recall(x, y, "PQ4")
    got = describe(x, y, ("PQ4",))
    assert np.isnan(got["pq4_recall@1"]) and "PQ4" in caplog.text and got["exact_recall@1"] >= 0
