"""What a re-ranker may ask of a gallery: its vectors by id and a top-k search, with the leave-one-out self removed.

``GalleryAccess`` wraps an in-memory (or memory-mapped) array and a search over it (an index
folder's: ``rerank.folder.gallery_access``). Every search runs in query chunks, so a re-ranker
holds (chunk, k) results at a time, never an N × N matrix.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import faiss
import numpy as np

from ..metrics import sort_ties

log = logging.getLogger(__name__)

SearchFn = Callable[[np.ndarray, int], "tuple[np.ndarray, np.ndarray]"]
CHUNK = 1024  # queries per search: (chunk, k) scores and ids held at once


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def exact_knn(vectors: np.ndarray, queries: np.ndarray, k: int, exclude: np.ndarray | None = None,
              chunk_size: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product over the rows of ``vectors`` (N, D), skipping ``exclude`` ids.

    Returns (scores (Nq, k) float32, ids (Nq, k) int64), ties ranked by id; k is clamped to the
    rows left.
    """
    exclude = np.empty(0, np.int64) if exclude is None else np.asarray(exclude, np.int64)
    k = max(0, min(k, len(vectors) - len(exclude)))
    wide = min(len(vectors), k + len(exclude))
    base = np.ascontiguousarray(vectors, dtype=np.float32)
    scores = np.empty((len(queries), k), np.float32)
    ids = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), chunk_size):
        q = np.ascontiguousarray(queries[start:start + chunk_size], dtype=np.float32)
        s, i = faiss.knn(q, base, wide, metric=faiss.METRIC_INNER_PRODUCT)
        sort_ties(s, i)
        if len(exclude):
            s, i = first_kept(s, i, ~np.isin(i, exclude), k)
        scores[start:start + len(q)], ids[start:start + len(q)] = s[:, :k], i[:, :k]
    return scores, ids


def first_kept(scores: np.ndarray, ids: np.ndarray, keep: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the first ``k`` entries where ``keep`` is true, in rank order (rows short of k padded -1 / -inf)."""
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    s, i = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
    dropped = ~np.take_along_axis(keep, order, 1)
    s[dropped], i[dropped] = -np.inf, -1
    return s, i


@dataclass
class GalleryAccess:
    """A gallery's vectors (N, D) float32 unit rows (row i = id i) and a top-k search over them.

    search(queries, k) → (scores, ids), best first, ids -1 for missing hits; default: exact
    inner product over ``vectors``. ``removed``: ids that no search returns. ``cache`` keeps
    what a re-ranker computes once per gallery (DBA's augmented vectors), so a caller that
    keeps this object (the service) pays for it once.
    """
    vectors: np.ndarray
    search_fn: SearchFn | None = None
    removed: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    cache: dict[Any, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def count(self) -> int:
        """Searchable items (removed ones excluded)."""
        return len(self.vectors) - len(self.removed)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.search_fn is not None:
            return self.search_fn(queries, k)
        return exact_knn(self.vectors, queries, k, self.removed)

    def neighbours(self, queries: np.ndarray, k: int, self_ids: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of ``queries`` (Nq, D); with ``self_ids`` (Nq,) each query's own gallery row is left out."""
        if self_ids is None:
            return self.search(queries, min(k, self.count))
        k = min(k, self.count - 1)
        scores, ids = self.search(queries, min(k + 1, self.count))
        return first_kept(scores, ids, ids != np.asarray(self_ids)[:, None], k)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Vectors of ``ids`` (any shape) → (*ids.shape, D); id -1 gives a zero vector."""
        flat = np.asarray(ids).ravel()
        out = np.zeros((len(flat), self.vectors.shape[1]), np.float32)
        ok = flat >= 0
        out[ok] = self.vectors[flat[ok]]
        return out.reshape(*np.shape(ids), self.vectors.shape[1])

    def with_vectors(self, vectors: np.ndarray) -> "GalleryAccess":
        """The same gallery (removed ids kept) searched exactly over other vectors of the same rows (DBA's)."""
        return GalleryAccess(vectors, None, self.removed)
