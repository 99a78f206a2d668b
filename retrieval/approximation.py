"""What an approximate gallery index costs: its Recall@K beside exact search, on a sample of labelled queries.

``query.py --eval`` scores every query through the index (IVF, PQ, HNSW ...). On a large
gallery exact search of every query would cost what the index exists to avoid, so a seeded
sample of the queries also goes through brute force over the folder's stored embeddings
(``retrieval.index.exact``). Both are scored on that same sample, so the difference is what
the index settings (nlist, nprobe, PQ code size) cost, and k-NN recall says how much of the
exact top-k the index returns, with the time per query of each.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from .gallery import Gallery
from .index.exact import exact_search, knn_recall, stored_embeddings
from .metrics import metrics_from_neighbours

DEFAULT_SAMPLE = 1000  # queries searched exactly: at 10M x 512-d, ~20 GB read once for the whole sample


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
    codes = query_codes[rows]
    return {
        "sample": len(rows), "seed": seed,
        "index": metrics_from_neighbours(approx, codes, gallery_codes, ks=ks, map_at_r=map_at_r),
        "exact": metrics_from_neighbours(exact, codes, gallery_codes, ks=ks, map_at_r=map_at_r),
        "knn_recall": {f"knn_recall@{k}": knn_recall(approx, exact, min(k, exact.shape[1])) for k in ks},
        "ms_per_query": {"index": 1000 * index_s / len(rows), "exact": 1000 * exact_s / len(rows)},
    }
