"""k-reciprocal re-ranking against the authors' algorithm (Zhong et al. 2017, their re_ranking code) on full matrices."""
import numpy as np
import pytest

from retrieval.rerank import GalleryAccess, kreciprocal

from .conftest import clustered


def paper_final_distance(dist, k1, k2, lam):
    """The authors' loops over a full (M, M) distance matrix; the 2/3 test as the paper's ≥; d* of every pair."""
    m = len(dist)
    rank = np.argsort(dist, axis=1, kind="stable")
    v = np.zeros((m, m))
    half = int(np.around(k1 / 2))
    for i in range(m):
        forward = rank[i, :k1 + 1]
        backward = rank[forward, :k1 + 1]
        recip = forward[np.where(backward == i)[0]]
        expansion = recip
        for cand in recip:
            c_forward = rank[cand, :half + 1]
            c_backward = rank[c_forward, :half + 1]
            c_recip = c_forward[np.where(c_backward == cand)[0]]
            if len(np.intersect1d(c_recip, recip)) >= 2 / 3 * len(c_recip):
                expansion = np.append(expansion, c_recip)
        expansion = np.unique(expansion)
        weight = np.exp(-dist[i, expansion])
        v[i, expansion] = weight / weight.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(m)])
    jaccard = np.array([[1 - np.minimum(v[i], v[j]).sum() / np.maximum(v[i], v[j]).sum() for j in range(m)]
                        for i in range(m)])
    return (1 - lam) * jaccard + lam * dist


def distances(a, b):
    d = np.maximum(2 - 2 * a.astype(np.float64) @ b.astype(np.float64).T, 0)
    return d


@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (10, 1, 0.0), (7, 3, 1.0)])
def test_full_candidates_equal_the_paper_leave_one_out(k1, k2, lam):
    x, _ = clustered(n=120)
    dist = distances(x, x)
    np.fill_diagonal(dist, 0)
    full = paper_final_distance(dist, k1, k2, lam)
    np.fill_diagonal(full, np.inf)
    want = np.argsort(full, axis=1, kind="stable")[:, :10]
    scores, ids = kreciprocal(x, GalleryAccess(x), 10, np.arange(len(x)), k1=k1, k2=k2, lam=lam,
                              candidates=len(x) - 1)
    assert (ids == want).mean() > 0.99
    np.testing.assert_allclose(1 - scores, np.take_along_axis(full, ids, 1), atol=1e-4)
    assert not (ids == np.arange(len(x))[:, None]).any()


def test_full_candidates_equal_the_paper_one_probe_at_a_time():
    x, _ = clustered(n=150, seed=3)
    q, g = x[:6], x[6:]
    scores, ids = kreciprocal(q, GalleryAccess(g), 8, k1=15, k2=4, lam=0.3, candidates=len(g))
    for p in range(len(q)):
        items = np.concatenate([q[p:p + 1], g])  # the probe first, then the gallery
        dist = distances(items, items)
        np.fill_diagonal(dist, 0)
        d_star = paper_final_distance(dist, 15, 4, 0.3)[0, 1:]
        assert ids[p].tolist() == np.argsort(d_star, kind="stable")[:8].tolist()
        np.testing.assert_allclose(1 - scores[p], d_star[ids[p]], atol=1e-4)


def test_fewer_candidates_keep_the_list_inside_them():
    x, _ = clustered(n=200)
    access = GalleryAccess(x)
    first = access.neighbours(x, 30, np.arange(len(x)))[1]
    _, ids = kreciprocal(x, access, 30, np.arange(len(x)), k1=10, k2=3, lam=0.3, candidates=30)
    assert all(set(ids[i]) == set(first[i]) for i in range(len(x)))  # the candidates, re-ordered


def test_k_larger_than_candidates_widens_them():
    x, _ = clustered(n=60)
    _, ids = kreciprocal(x, GalleryAccess(x), 40, np.arange(len(x)), k1=10, k2=3, lam=0.3, candidates=20)
    assert ids.shape == (60, 40) and (ids >= 0).all()


def test_a_gallery_smaller_than_k1_and_k2():
    x, _ = clustered(n=8)
    full = paper_final_distance(distances(x, x) * (1 - np.eye(8)), 20, 10, 0.3)  # the slices take all 8
    np.fill_diagonal(full, np.inf)
    _, ids = kreciprocal(x, GalleryAccess(x), 7, np.arange(8), k1=20, k2=10, lam=0.3, candidates=100)
    assert ids.tolist() == np.argsort(full, axis=1, kind="stable")[:, :7].tolist()
