"""What re-ranking buys on a labelled protocol: metrics and time per query of the plain and re-ranked lists."""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from ..metrics import metrics_from_neighbours, neighbours_needed
from .access import GalleryAccess
from .run import prepare_rerank, rerank_search
from .spec import RerankSpec


def _timed_search(queries, access, depth, spec, self_ids) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    ids = rerank_search(queries, access, depth, spec, self_ids=self_ids)[1]
    return ids, time.perf_counter() - start


def plain_vs_reranked(query: np.ndarray, query_labels, spec: RerankSpec, ks: Sequence[int] = (1, 2, 4, 8), *,
                      gallery: np.ndarray | GalleryAccess | None = None, gallery_labels=None,
                      map_at_r: bool = True) -> dict:
    """{"rerank", "plain", "reranked", "ms_per_query", "prepare_s", "queries"} of one protocol.

    gallery=None: leave-one-out on ``query`` (query i = gallery row i, excluded from its own
    lists); else query/gallery. Labels are ints. Both lists are ``neighbours_needed`` deep (max K,
    or the largest class for MAP@R). ms_per_query counts the whole search of each (first pass
    included); prepare_s is the once-per-gallery work (DBA's augmentation), not in ms_per_query.
    """
    leave_one_out = gallery is None
    access = GalleryAccess(np.asarray(query, np.float32)) if leave_one_out else (
        gallery if isinstance(gallery, GalleryAccess) else GalleryAccess(np.asarray(gallery, np.float32)))
    gallery_labels = np.asarray(query_labels if leave_one_out else gallery_labels, np.int64)
    self_ids = np.arange(len(query)) if leave_one_out else None
    depth = neighbours_needed(ks, gallery_labels, map_at_r, access.count - int(leave_one_out))
    plain, plain_s = _timed_search(query, access, depth, RerankSpec(), self_ids)
    start = time.perf_counter()
    prepare_rerank(access, spec)  # once per gallery (DBA), outside the time per query
    prepare_s = time.perf_counter() - start
    reranked, reranked_s = _timed_search(query, access, depth, spec, self_ids)
    scored = dict(ks=ks, map_at_r=map_at_r, leave_one_out=leave_one_out)
    n = max(1, len(query))
    return {"rerank": str(spec), "queries": len(query),
            "plain": metrics_from_neighbours(plain, query_labels, gallery_labels, **scored),
            "reranked": metrics_from_neighbours(reranked, query_labels, gallery_labels, **scored),
            "ms_per_query": {"plain": 1000 * plain_s / n, "reranked": 1000 * reranked_s / n},
            "prepare_s": prepare_s}
