"""αQE against the formula of Radenović et al. 2018 §5 written out on full matrices."""
import numpy as np
import pytest

from retrieval.rerank import GalleryAccess, aqe

from .conftest import top


def reference(q, g, k, n, alpha, leave_one_out):
    sim = q @ g.T
    if leave_one_out:
        np.fill_diagonal(sim, -np.inf)
    s, i = top(sim, n)
    new = q + np.einsum("qn,qnd->qd", np.maximum(s, 0) ** alpha, g[i])
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    sim = new @ g.T
    if leave_one_out:
        np.fill_diagonal(sim, -np.inf)
    return top(sim, k)


@pytest.mark.parametrize("n,alpha", [(1, 0.0), (3, 3.0), (10, 1.5)])
def test_leave_one_out_matches_formula(points, n, alpha):
    x, _ = points
    scores, ids = aqe(x, GalleryAccess(x), 8, np.arange(len(x)), n=n, alpha=alpha)
    ref_s, ref_i = reference(x.astype(np.float64), x.astype(np.float64), 8, n, alpha, True)
    assert (ids == ref_i).mean() > 0.99  # float32 vs float64: a near-tie may swap
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)
    assert not (ids == np.arange(len(x))[:, None]).any()


def test_query_gallery_matches_formula(points):
    x, _ = points
    q, g = x[:40], x[40:]
    scores, ids = aqe(q, GalleryAccess(g), 5, n=4, alpha=3.0)
    ref_s, ref_i = reference(q.astype(np.float64), g.astype(np.float64), 5, 4, 3.0, False)
    assert (ids == ref_i).mean() > 0.99
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)


def test_negative_scores_are_clamped():
    q = np.array([[1.0, 0.0]], np.float32)
    g = np.array([[-1.0, 0.0], [0.0, 1.0]], np.float32)
    scores, ids = aqe(q, GalleryAccess(g), 2, n=2, alpha=1.0)
    # s = (0, -1): both weights are 0, the query is unchanged
    assert ids.tolist() == [[1, 0]] and np.allclose(scores, [[0.0, -1.0]])
