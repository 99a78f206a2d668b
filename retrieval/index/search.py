"""Top-k search of an index, ties ranked by id as in retrieval.metrics."""
from __future__ import annotations

import logging

import faiss
import numpy as np

from ..metrics import sort_ties

log = logging.getLogger(__name__)


def search(index: faiss.Index, queries: np.ndarray, k: int, chunk_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by inner product: queries (Nq, dim) → (scores (Nq, k) float32, ids (Nq, k) int64).

    k larger than the index is clamped with a warning. Ties are ranked by id (lower first), as
    in retrieval.metrics. An approximate index may return fewer than k hits for a query; the
    missing ones have id -1 and score -inf.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != index.d:
        raise ValueError(f"queries: expected (N, {index.d}), got shape {q.shape}")
    if k < 1:
        raise ValueError(f"k: expected >= 1, got {k}")
    if k > index.ntotal:
        log.warning("k=%d is larger than the gallery (%d items); clamped to %d", k, index.ntotal, index.ntotal)
        k = int(index.ntotal)
    scores = np.empty((len(q), k), dtype=np.float32)
    ids = np.empty((len(q), k), dtype=np.int64)
    for start in range(0, len(q), chunk_size):
        s, i = index.search(q[start:start + chunk_size], k)
        s[i < 0] = -np.inf
        sort_ties(s, i)
        scores[start:start + len(s)], ids[start:start + len(s)] = s, i
    return scores, ids
