"""What an approximate index costs: its Recall@K beside exact search of the same labelled queries.

Two callers, one comparison (``side_by_side``): metrics of each search, k-NN recall (how much
of the exact top-k the index returns) and the time per query of each.

- ``compare_with_exact`` (``query.py --eval``): a gallery folder of any size. Exact search of
  every query would cost what the index exists to avoid, so a seeded sample of the queries
  also goes through brute force over the folder's stored embeddings (``retrieval.index.exact``),
  and both searches are scored on that same sample.
- ``index_vs_exact`` (``retrieval-benchmark --index-type``): a data set's test protocol, whose
  embeddings fit in RAM; the index is built in memory over the test (gallery) embeddings.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from .gallery import Gallery
from .index import create_index, search, set_search_params
from .index.exact import exact_search, knn_recall, stored_embeddings
from .metrics import drop_self, metrics_from_neighbours, neighbours_needed

DEFAULT_SAMPLE = 1000  # queries searched exactly: at 10M x 512-d, ~20 GB read once for the whole sample


def search_setting(factory: str, nprobe: int | None = None, ef_search: int | None = None) -> str:
    """How an index was searched, for report headers: "IVF4096,PQ32, nprobe 16", "HNSW32, efSearch 64", "Flat"."""
    if nprobe is not None and "IVF" in factory:
        return f"{factory}, nprobe {nprobe}"
    if ef_search is not None and "HNSW" in factory:
        return f"{factory}, efSearch {ef_search}"
    return factory


def sample_rows(count: int, size: int, seed: int = 0) -> np.ndarray:
    """Sorted rows of a seeded sample of ``size`` out of ``count`` (all rows when size >= count)."""
    if size >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=size, replace=False))


def compare_with_exact(gallery: Gallery, queries: np.ndarray, query_codes: np.ndarray, gallery_codes: np.ndarray,
                       ks: Sequence[int], depth: int, *, nprobe: int | None = None, ef_search: int | None = None,
                       sample: int = DEFAULT_SAMPLE, seed: int = 0, map_at_r: bool = True) -> dict | None:
    """The index and exact search scored on one seeded sample of the queries; None without stored embeddings.

    queries: (Nq, D) embeddings; query_codes / gallery_codes: int labels (``gallery_codes`` one
    per index entry, unmatched entries negative and distinct); depth: neighbours retrieved per
    query (max K, or the largest class for MAP@R). Returns {"sample", "index", "exact",
    "knn_recall", "ms_per_query"}: metrics of each search on the sample, k-NN recall@K for each
    K, and the time per query of each search.
    """
    vectors = stored_embeddings(gallery.folder, gallery.manifest)
    if vectors is None:
        return None
    rows = sample_rows(len(queries), sample, seed)
    q = np.ascontiguousarray(queries[rows])
    start = time.perf_counter()
    _, approx = gallery.search(q, depth, nprobe, ef_search)
    index_s = time.perf_counter() - start
    start = time.perf_counter()
    _, exact = exact_search(vectors, q, depth, exclude=gallery.removed_ids)
    exact_s = time.perf_counter() - start
    return side_by_side(approx, exact, query_codes[rows], gallery_codes, ks, map_at_r, index_s, exact_s,
                        sample=len(rows), seed=seed)


def side_by_side(approx_ids: np.ndarray, exact_ids: np.ndarray, query_codes: np.ndarray, gallery_codes: np.ndarray,
                 ks: Sequence[int], map_at_r: bool, index_s: float, exact_s: float, leave_one_out: bool = False,
                 **fields) -> dict:
    """{"index", "exact", "knn_recall", "ms_per_query"} of two ranked id arrays (Nq, depth) of the same queries."""
    n = max(1, len(exact_ids))
    scored = dict(ks=ks, map_at_r=map_at_r, leave_one_out=leave_one_out)
    return {
        **fields,
        "index": metrics_from_neighbours(approx_ids, query_codes, gallery_codes, **scored),
        "exact": metrics_from_neighbours(exact_ids, query_codes, gallery_codes, **scored),
        "knn_recall": {f"knn_recall@{k}": knn_recall(approx_ids, exact_ids, min(k, exact_ids.shape[1])) for k in ks},
        "ms_per_query": {"index": 1000 * index_s / n, "exact": 1000 * exact_s / n},
    }


def index_vs_exact(query: np.ndarray, query_labels: np.ndarray, factory: str, ks: Sequence[int], *,
                   gallery: np.ndarray | None = None, gallery_labels: np.ndarray | None = None,
                   nprobe: int | None = None, ef_search: int | None = None, map_at_r: bool = True) -> dict:
    """A ``factory`` index trained on and holding the gallery embeddings, scored beside exact search.

    gallery=None: leave-one-out on ``query`` (CUB, Cars196, SOP): each query's own entry is
    dropped from both result lists. Else the query/gallery protocol (In-Shop). Labels are ints.
    Holds two (Nq, depth) id arrays, depth = max K (or the largest class, for MAP@R).
    """
    leave_one_out = gallery is None
    gallery, gallery_labels = (query, query_labels) if leave_one_out else (gallery, gallery_labels)
    gallery_labels = np.asarray(gallery_labels, np.int64)
    depth = neighbours_needed(ks, gallery_labels, map_at_r, len(gallery) - int(leave_one_out))
    wide = depth + int(leave_one_out)
    index = create_index(factory, gallery)
    index.add(gallery)
    set_search_params(index, nprobe=nprobe, ef_search=ef_search)
    start = time.perf_counter()
    approx = search(index, query, wide)[1]
    index_s = time.perf_counter() - start
    start = time.perf_counter()
    exact = exact_search(gallery, query, wide)[1]
    exact_s = time.perf_counter() - start
    if leave_one_out:
        own = np.arange(len(query))
        approx, exact = drop_self(approx, own), drop_self(exact, own)
    return side_by_side(approx, exact, np.asarray(query_labels, np.int64), gallery_labels, ks, map_at_r, index_s,
                        exact_s, leave_one_out, index_setting=search_setting(factory, nprobe, ef_search),
                        queries=len(query))
