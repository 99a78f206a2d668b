"""α-weighted query expansion (αQE; Radenović, Tolias, Chum, TPAMI 2018, §5).

The query is replaced by ``normalise(q + Σ_{i≤n} s_i^α g_i)`` over its top-n results g_i
(scores s_i, clamped at 0 before the power; α = 0 is average query expansion, Chum et al.
2007) and searched again. One extra search per query; memory (chunk, n, D).
"""
from __future__ import annotations

import numpy as np

from .access import CHUNK, GalleryAccess, normalise


def expand(queries: np.ndarray, scores: np.ndarray, ids: np.ndarray, access: GalleryAccess, n: int,
           alpha: float) -> np.ndarray:
    """normalise(q + Σ_{i≤n} max(s_i, 0)^α g_i): queries (Nq, D), scores / ids (Nq, ≥n) best first → (Nq, D).

    Missing hits (id -1) add nothing.
    """
    out = np.empty(queries.shape, np.float32)
    for start in range(0, len(queries), CHUNK):
        rows = slice(start, start + CHUNK)
        s, i = scores[rows, :n], ids[rows, :n]
        weights = np.where(i >= 0, np.maximum(s, 0) ** alpha, 0).astype(np.float32)
        out[rows] = queries[rows] + np.einsum("qn,qnd->qd", weights, access.rows(i))
    return normalise(out)


def aqe(queries: np.ndarray, access: GalleryAccess, k: int, self_ids: np.ndarray | None = None, *,
        n: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """αQE: (scores, ids) (Nq, k) of the expanded queries (scores = inner products with them).

    With ``self_ids`` (leave-one-out) the query's own row is neither expanded with nor returned.
    """
    first_scores, first_ids = access.neighbours(queries, n, self_ids)
    return access.neighbours(expand(queries, first_scores, first_ids, access, n, alpha), k, self_ids)
