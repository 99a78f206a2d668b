"""DBA against its formula on full matrices; the originals stay untouched (undo = use them again)."""
import numpy as np
import pytest

from retrieval.rerank import GalleryAccess, augment, augmented, dba, dba_aqe

from .conftest import top
from .test_aqe import reference as aqe_reference


def reference_augment(g, n, alpha):
    sim = g @ g.T
    np.fill_diagonal(sim, -np.inf)
    s, i = top(sim, n)
    new = g + np.einsum("qn,qnd->qd", np.maximum(s, 0) ** alpha, g[i])
    return new / np.linalg.norm(new, axis=1, keepdims=True)


@pytest.mark.parametrize("n,alpha", [(1, 3.0), (4, 0.0), (8, 3.0)])
def test_augment_matches_formula(points, n, alpha):
    x, _ = points
    np.testing.assert_allclose(augment(GalleryAccess(x), n, alpha, chunk_size=64),
                               reference_augment(x.astype(np.float64), n, alpha), atol=1e-5)


def test_search_and_dba_aqe_match_formula(points):
    x, _ = points
    g = reference_augment(x.astype(np.float64), 3, 3.0)
    sim = x.astype(np.float64) @ g.T
    np.fill_diagonal(sim, -np.inf)
    ref_s, ref_i = top(sim, 8)
    scores, ids = dba(x, GalleryAccess(x), 8, np.arange(len(x)), n=3, alpha=3.0)
    assert (ids == ref_i).mean() > 0.99
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)
    ref_s, ref_i = aqe_reference(x.astype(np.float64), g, 8, 2, 3.0, True)
    scores, ids = dba_aqe(x, GalleryAccess(x), 8, np.arange(len(x)), n=2, alpha=3.0, dba_n=3, dba_alpha=3.0)
    assert (ids == ref_i).mean() > 0.99 and not (ids == np.arange(len(x))[:, None]).any()


def test_round_trip_keeps_the_originals(points):
    x, _ = points
    before = x.copy()
    access = GalleryAccess(x)
    plain = access.neighbours(x, 5, np.arange(len(x)))
    dba_access = augmented(access, 3, 3.0)
    assert not np.allclose(dba_access.vectors, x)  # augmentation changed the searched vectors ...
    np.testing.assert_array_equal(access.vectors, before)  # ... never the originals
    assert augmented(access, 3, 3.0).vectors is dba_access.vectors  # computed once per (n, α)
    again = access.neighbours(x, 5, np.arange(len(x)))  # undo: the original gallery searches as before
    np.testing.assert_array_equal(again[1], plain[1])
