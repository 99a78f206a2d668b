"""Database-side augmentation (DBA; Arandjelović & Zisserman 2012, α-weighted as in Radenović et al. 2018 §5).

Every gallery vector is replaced by ``normalise(g + Σ_{i≤n} s_i^α g_i)`` over its own top-n
gallery neighbours (itself excluded from them, so an exact duplicate still counts) and the
queries are searched against the augmented vectors. Computed once per gallery, in chunks of
rows: memory (chunk, n, D) plus the (N, D) result; the original vectors are never modified,
so "undo" is using them again (an index folder keeps its originals, DESIGN.md "Re-ranking").

Queries are not augmented (they are new images; under leave-one-out too, where the query's own
augmented row is excluded from its list like its original).
"""
from __future__ import annotations

import logging

import numpy as np

from .access import CHUNK, GalleryAccess
from .aqe import aqe, expand

log = logging.getLogger(__name__)


def augment(access: GalleryAccess, n: int, alpha: float, chunk_size: int = 4 * CHUNK) -> np.ndarray:
    """DBA vectors (N, D) float32 unit rows of the gallery; ``access.vectors`` is left as it is."""
    vectors = access.vectors
    out = np.empty(vectors.shape, np.float32)
    for start in range(0, len(vectors), chunk_size):
        rows = np.arange(start, min(start + chunk_size, len(vectors)))
        x = np.ascontiguousarray(vectors[rows], dtype=np.float32)
        scores, ids = access.neighbours(x, n, self_ids=rows)
        out[rows] = expand(x, scores, ids, access, n, alpha)
    return out


def augmented(access: GalleryAccess, n: int, alpha: float) -> GalleryAccess:
    """The gallery with DBA vectors (computed once per (n, α) and kept in ``access.cache``), searched exactly."""
    key = ("dba", n, float(alpha))
    if key not in access.cache:
        log.debug("DBA (n=%d, alpha=%g) of %d gallery vectors", n, alpha, len(access.vectors))
        access.cache[key] = augment(access, n, alpha)
    return access.with_vectors(access.cache[key])


def dba(queries: np.ndarray, access: GalleryAccess, k: int, self_ids: np.ndarray | None = None, *,
        n: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) (Nq, k) of the queries against the DBA gallery (exact search over its vectors)."""
    return augmented(access, n, alpha).neighbours(queries, k, self_ids)


def dba_aqe(queries: np.ndarray, access: GalleryAccess, k: int, self_ids: np.ndarray | None = None, *,
            n: int, alpha: float, dba_n: int, dba_alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """DBA of the gallery, then αQE of the queries over the augmented vectors (Radenović et al. 2018 §5)."""
    return aqe(queries, augmented(access, dba_n, dba_alpha), k, self_ids, n=n, alpha=alpha)
