"""Retrieval metrics: Recall@K, MAP@R and R-precision from exact FAISS search over query chunks.

Definitions (DESIGN.md "Metrics"):

- Recall@K (as in metric-learning papers, e.g. Song et al. 2016, Musgrave et al. 2020):
  the fraction of queries with at least one item of the query's class among its K nearest
  gallery items. (Not the information-retrieval recall, which divides by the class size.)
- MAP@R and R-precision (Musgrave et al. 2020, "A Metric Learning Reality Check", §3.2):
  with R = the number of *other* gallery items of the query's class,
  R-precision = (same-class items among the R nearest) / R, and
  MAP@R = 1/R · Σ_{i=1..R} P(i)·rel(i), P(i) the precision among the i nearest.

Protocols:

- leave-one-out (``gallery=None``; CUB, Cars196, SOP): every test item is a query against all
  the others; the query itself is removed from its own neighbours (by row id, so an exact
  duplicate of the query still counts as a neighbour).
- query/gallery (In-Shop, user galleries): separate sets, nothing excluded.

Edge cases:

- A query whose class has no other member in the gallery ("lone" query, R = 0) cannot score
  a hit and has no MAP@R. As pytorch-metric-learning's ``AccuracyCalculator`` does, it is left
  out of every average (Recall@K included) and the count is logged. If every query is lone,
  all metrics are NaN (with a warning).
- Ties: items with equal scores are ranked by gallery row index, lower first, so results do
  not depend on FAISS's internal order. Which of several items tied with the last retrieved
  score makes it into the searched list is FAISS's choice; the list is K (or R) long, so this
  only matters for exact duplicates straddling position K.
- K larger than the gallery (N - 1 for leave-one-out) is clamped to the gallery size with a
  warning; the result keeps the requested key (``recall@1000``) and equals "any same-class
  item in the whole gallery".

Memory stays bounded: queries are searched ``chunk_size`` at a time with ``faiss.knn``
(exact inner product, no index copy of the gallery), holding chunk × K scores and ids;
the N × N similarity matrix is never formed (SOP: 60,502² floats would be 14.6 GB).
"""
from __future__ import annotations

import logging
import math
from typing import Sequence

import faiss
import numpy as np

from .vectors import check_embeddings

log = logging.getLogger(__name__)

# Largest chunk × K block of search results held at once (scores float32 + ids int64 = 12 bytes each):
# 2^24 entries ≈ 200 MB. Chunks shrink when K (or the largest class) is large.
_MAX_BLOCK = 1 << 24


def _as_labels(y, n: int, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{name}: expected {n} labels (one per embedding), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name}: expected integer labels, got dtype {y.dtype}")
    return y.astype(np.int64, copy=False)


def _clamp_ks(ks: Sequence[int], n_gallery: int) -> list[int]:
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks: expected K values >= 1, got {list(ks)}")
    too_big = [k for k in ks if k > n_gallery]
    if too_big:
        log.warning("Recall@K: K=%s larger than the gallery (%d items); clamped to %d",
                    ",".join(map(str, too_big)), n_gallery, n_gallery)
    return [min(k, n_gallery) for k in ks]


def _same_class_counts(query_labels: np.ndarray, gallery_labels: np.ndarray, leave_one_out: bool) -> np.ndarray:
    """R per query: gallery items of the query's class, excluding the query itself (leave-one-out)."""
    classes, counts = np.unique(gallery_labels, return_counts=True)
    pos = np.clip(np.searchsorted(classes, query_labels), 0, len(classes) - 1)
    r = np.where(classes[pos] == query_labels, counts[pos], 0)
    return r - 1 if leave_one_out else r


def sort_ties(scores: np.ndarray, ids: np.ndarray) -> None:
    """In place: within rows holding equal scores, order tied items by gallery id (lower first)."""
    rows = np.flatnonzero((scores[:, 1:] == scores[:, :-1]).any(axis=1))
    if len(rows):
        order = np.lexsort((ids[rows], -scores[rows]), axis=-1)
        scores[rows] = np.take_along_axis(scores[rows], order, axis=1)
        ids[rows] = np.take_along_axis(ids[rows], order, axis=1)


def drop_self(ids: np.ndarray, self_ids: np.ndarray) -> np.ndarray:
    """Remove each query's own row id from its neighbour list (the last one if it is absent): (n, K+1) → (n, K)."""
    is_self = ids == self_ids[:, None]
    pos = np.where(is_self.any(axis=1), is_self.argmax(axis=1), ids.shape[1] - 1)
    cols = np.arange(ids.shape[1] - 1)[None, :]
    return np.take_along_axis(ids, cols + (cols >= pos[:, None]), axis=1)


def knn_chunks(query: np.ndarray, gallery: np.ndarray, k: int, chunk_size: int = 1024,
               leave_one_out: bool = False):
    """Yield (start, ids) per query chunk: ids (n_chunk, k) int64 of the k highest inner products.

    query: (Nq, D) float32, gallery: (Ng, D) float32; ties ordered by gallery id. With
    ``leave_one_out`` (query is gallery) each query's own row is removed from its list.
    """
    extra = int(leave_one_out)
    k_search = min(k + extra, len(gallery))
    for start in range(0, len(query), chunk_size):
        scores, ids = faiss.knn(query[start:start + chunk_size], gallery, k_search,
                                metric=faiss.METRIC_INNER_PRODUCT)
        sort_ties(scores, ids)
        if leave_one_out:
            ids = drop_self(ids, np.arange(start, start + len(ids)))
        yield start, ids


def _chunk_scores(hits: np.ndarray, r: np.ndarray, ks: list[int], map_at_r: bool) -> dict[str, np.ndarray]:
    """Per-query scores of one chunk. hits: (n, K) bool, same class at each rank; r: (n,) R ≥ 1."""
    any_hit = hits.any(axis=1)
    first = np.where(any_hit, hits.argmax(axis=1), hits.shape[1])
    out = {f"k{i}": first < k for i, k in enumerate(ks)}
    if map_at_r:
        r_max = int(r.max())
        rel = hits[:, :r_max] & (np.arange(r_max)[None, :] < r[:, None])  # only the first R ranks count
        correct = np.cumsum(rel, axis=1)
        precision = correct / np.arange(1, r_max + 1)
        out["map"] = (precision * rel).sum(axis=1) / r
        out["rp"] = correct[np.arange(len(r)), r - 1] / r
    return out


def _pad(hits: np.ndarray, width: int) -> np.ndarray:
    if hits.shape[1] >= width:
        return hits
    return np.pad(hits, ((0, 0), (0, width - hits.shape[1])))


def _average(query_labels: np.ndarray, gallery_labels: np.ndarray, r: np.ndarray, chunks, ks: Sequence[int],
             map_at_r: bool, n_gallery: int) -> dict[str, float]:
    """Average per-query scores over the queries with R > 0; ``chunks`` yields (start, neighbour ids)."""
    names = [f"recall@{int(k)}" for k in ks]
    keys = names + (["map@r", "r_precision"] if map_at_r else [])
    scored = int((r > 0).sum())
    lone = len(r) - scored
    if lone:
        log.info("retrieval_metrics: %d of %d queries have no other item of their class in the gallery; "
                 "left out of the averages (as pytorch-metric-learning's AccuracyCalculator)", lone, len(r))
    if not scored:
        log.warning("retrieval_metrics: no query has another item of its class in the gallery; metrics are NaN")
        return {key: math.nan for key in keys}
    ks = _clamp_ks(ks, n_gallery)
    width = max(max(ks), int(r.max()) if map_at_r else 0)
    sums: dict[str, float] = {}
    for start, ids in chunks:
        sel = slice(start, start + len(ids))
        keep = r[sel] > 0
        ids = ids[keep]
        hits = (ids >= 0) & (gallery_labels[ids] == query_labels[sel][keep, None])
        for name, values in _chunk_scores(_pad(hits, width), r[sel][keep], ks, map_at_r).items():
            sums[name] = sums.get(name, 0.0) + float(values.sum())
    out = {name: sums[f"k{i}"] / scored for i, name in enumerate(names)}
    if map_at_r:
        out["map@r"] = sums["map"] / scored
        out["r_precision"] = sums["rp"] / scored
    return out


def retrieval_metrics(query: np.ndarray, query_labels, gallery: np.ndarray | None = None,
                      gallery_labels=None, ks: Sequence[int] = (1, 2, 4, 8), chunk_size: int = 1024,
                      map_at_r: bool = True) -> dict[str, float]:
    """Recall@K for each K in ``ks`` plus MAP@R and R-precision.

    query: (Nq, D) float32 L2-normalised; query_labels: (Nq,) int. ``gallery=None`` →
    leave-one-out on ``query``; else gallery: (Ng, D), gallery_labels: (Ng,) int.
    Returns {"recall@1": ..., "recall@2": ..., "map@r": ..., "r_precision": ...} (fractions in
    [0, 1]; the last two only with ``map_at_r``). See the module docstring for edge cases.
    """
    query = check_embeddings(query, "query")
    query_labels = _as_labels(query_labels, len(query), "query_labels")
    leave_one_out = gallery is None
    if leave_one_out:
        gallery, gallery_labels = query, query_labels
    else:
        if np.ndim(gallery) == 2 and np.shape(gallery)[1] != query.shape[1]:
            raise ValueError(f"query has dimension {query.shape[1]} but gallery has {np.shape(gallery)[1]}")
        gallery = check_embeddings(gallery, "gallery")
        gallery_labels = _as_labels(gallery_labels, len(gallery), "gallery_labels")
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected >= 1, got {chunk_size}")
    n_gallery = len(gallery) - int(leave_one_out)
    if n_gallery < 1:
        log.warning("retrieval_metrics: the gallery is empty (leave-one-out on one item); metrics are NaN")
        keys = [f"recall@{int(k)}" for k in ks] + (["map@r", "r_precision"] if map_at_r else [])
        return {key: math.nan for key in keys}
    r = _same_class_counts(query_labels, gallery_labels, leave_one_out)
    k = min(max(max(int(k) for k in ks), int(r.max()) if map_at_r else 0), n_gallery)
    chunk = max(1, min(chunk_size, _MAX_BLOCK // k))
    chunks = knn_chunks(query, gallery, k, chunk, leave_one_out)
    return _average(query_labels, gallery_labels, r, chunks, ks, map_at_r, n_gallery)


def neighbours_needed(ks: Sequence[int], gallery_labels, map_at_r: bool, n_gallery: int) -> int:
    """How many ranked neighbours per query ``metrics_from_neighbours`` needs: the largest K, or for
    MAP@R the largest class (R can be that large), at most the ``n_gallery`` searchable items."""
    labels = np.asarray(gallery_labels, dtype=np.int64)
    largest_class = int(np.bincount(labels[labels >= 0]).max()) if map_at_r and (labels >= 0).any() else 0
    return min(n_gallery, max(max(int(k) for k in ks), largest_class))


def metrics_from_neighbours(neighbour_ids: np.ndarray, query_labels, gallery_labels, ks: Sequence[int] = (1, 2, 4, 8),
                            map_at_r: bool = True, leave_one_out: bool = False) -> dict[str, float]:
    """The same metrics from ranked search results, e.g. of an approximate index.

    neighbour_ids: (Nq, K) int64 gallery rows, best first, -1 = no result (a miss);
    query_labels: (Nq,) int; gallery_labels: (Ng,) int. Ranks beyond K count as misses, so
    MAP@R is exact only when K >= the largest R. leave_one_out: query i is gallery row i and
    its own row is already dropped from its list (``drop_self``), so R counts the others.
    """
    ids = np.asarray(neighbour_ids, dtype=np.int64)
    query_labels = _as_labels(query_labels, len(ids), "query_labels")
    gallery_labels = np.asarray(gallery_labels, dtype=np.int64)
    if ids.ndim != 2 or (ids.size and ids.max() >= len(gallery_labels)):
        raise ValueError(f"neighbour_ids: expected (Nq, K) rows of ids < {len(gallery_labels)}, got shape {ids.shape}")
    r = _same_class_counts(query_labels, gallery_labels, leave_one_out=leave_one_out)
    return _average(query_labels, gallery_labels, r, [(0, ids)], ks, map_at_r, len(gallery_labels) - leave_one_out)
