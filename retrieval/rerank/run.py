"""One call from a query to re-ranked results: what the commands, the benchmarks and a service route use."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..vectors import check_embeddings
from .access import GalleryAccess
from .folder import gallery_access
from .spec import RerankSpec, parse_rerank


def as_access(gallery, nprobe: int | None = None, ef_search: int | None = None) -> GalleryAccess:
    """A ``GalleryAccess`` from one, from an index folder (its path, or opened: ``retrieval.gallery.Gallery``)
    or from (N, D) vectors."""
    if isinstance(gallery, GalleryAccess):
        return gallery
    if isinstance(gallery, (str, Path)):
        from ..gallery import open_gallery

        gallery = open_gallery(gallery)
    if hasattr(gallery, "manifest") and hasattr(gallery, "index"):
        return gallery_access(gallery, nprobe, ef_search)
    return GalleryAccess(check_embeddings(gallery, "gallery"))


def rerank_search(queries: np.ndarray, gallery, k: int, spec: RerankSpec | str = "none", *,
                  self_ids: np.ndarray | None = None, nprobe: int | None = None,
                  ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of ``queries`` (Nq, D) L2-normalised, first pass then the ``spec`` re-ranker.

    gallery: a ``GalleryAccess`` (keep one per gallery: DBA's augmented vectors are cached on
    it), an index folder (path or ``open_gallery``'s result) or (N, D) vectors.
    spec: a ``RerankSpec`` or ``NAME[:k=v,...]``.
    self_ids: (Nq,) gallery row of each query under leave-one-out (never returned, never used
    to expand). Returns (scores (Nq, k) float32, higher is better; ids (Nq, k) int64, -1 = none).
    """
    if isinstance(spec, str):
        spec = parse_rerank(spec)
    if k < 1:
        raise ValueError(f"k: expected >= 1, got {k}")
    access = as_access(gallery, nprobe, ef_search)
    queries = check_embeddings(queries, "queries")
    if queries.shape[1] != access.vectors.shape[1]:
        raise ValueError(f"queries: expected dimension {access.vectors.shape[1]}, got {queries.shape[1]}")
    method = spec.method
    return method.fn(queries, access, k, self_ids, **method.call_args(spec.args))


def prepare_rerank(gallery, spec: RerankSpec | str, *, nprobe: int | None = None,
                   ef_search: int | None = None) -> GalleryAccess:
    """A ``GalleryAccess`` with ``spec``'s once-per-gallery work done (DBA's augmented vectors): call it at start-up
    (a service's lifespan) and pass the result to every ``rerank_search``."""
    spec = parse_rerank(spec) if isinstance(spec, str) else spec
    access = as_access(gallery, nprobe, ef_search)
    if spec.method.prepare is not None:
        spec.method.prepare(access, spec.args)
    return access
