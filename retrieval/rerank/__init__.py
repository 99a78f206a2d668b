"""Re-ranking: a second stage over first-pass k-NN lists (DESIGN.md "Re-ranking").

One method per module: ``aqe`` (αQE), ``dba`` (database-side augmentation, and DBA + αQE),
``kreciprocal`` (k-reciprocal encoding, restricted to each query's candidates); ``folder``
keeps DBA in an index folder beside the original vectors; ``access``
is what they ask of a gallery (vectors by id, chunked top-k search); ``spec`` names them
(``RERANKERS``, ``parse_rerank``); ``run.rerank_search`` is the one call a command or a
service route makes; ``compare.plain_vs_reranked`` scores both lists on labelled queries.
Memory is bounded by query chunks and candidate lists: no N × N matrix is formed.
"""
from .access import GalleryAccess, exact_knn
from .aqe import aqe, expand
from .compare import plain_vs_reranked
from .dba import augment, augmented, dba, dba_aqe
from .kreciprocal import kreciprocal
from .run import as_access, prepare_rerank, rerank_search
from .spec import RERANKERS, Method, RerankSpec, parse_rerank, resolve_rerank
from .folder import attach_stored, gallery_access, save_dba, undo_dba

__all__ = ["GalleryAccess", "exact_knn", "gallery_access", "aqe", "expand", "plain_vs_reranked", "augment",
           "augmented", "dba", "dba_aqe", "kreciprocal", "as_access", "prepare_rerank", "rerank_search",
           "RERANKERS", "Method", "RerankSpec", "parse_rerank", "resolve_rerank", "attach_stored", "save_dba",
           "undo_dba"]
