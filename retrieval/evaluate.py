"""Evaluate a model on its test splits: embed, then Recall@K / MAP@R (DESIGN.md "Metrics").

``test`` → leave-one-out protocol (CUB, Cars196, SOP); ``query`` + ``gallery`` → query/gallery
protocol (In-Shop). The training loop calls ``evaluate_splits`` every ``train.eval_every`` epochs.
Every function embeds through an ``Embedder`` (``retrieval.embed``), which decides device,
precision, memory format and batching; ``cfg`` supplies the protocol (``eval``: K, MAP@R, chunks).
"""
from __future__ import annotations

import logging
import time

from torch.utils.data import Dataset

from .embed import Embedder
from .errors import DataError
from .embedding_space import mean_norm
from .metrics import retrieval_metrics
from .schema import Config

log = logging.getLogger(__name__)


def _embed_protocol(embedder: Embedder, splits: dict[str, Dataset], progress: bool):
    """(query embeddings, labels, gallery embeddings or None for leave-one-out, labels or None, protocol text)."""
    if "test" in splits:
        embeddings, labels = embedder.embed_dataset(splits["test"], progress)
        return embeddings, labels, None, None, f"leave-one-out on {len(labels)} test images"
    if "query" in splits and "gallery" in splits:
        query, query_labels = embedder.embed_dataset(splits["query"], progress)
        gallery, gallery_labels = embedder.embed_dataset(splits["gallery"], progress)
        return query, query_labels, gallery, gallery_labels, (f"{len(query_labels)} queries against "
                                                              f"{len(gallery_labels)} gallery images")
    raise DataError(f"evaluate_splits: expected a 'test' split or 'query' and 'gallery' splits, got {sorted(splits)}")


def _metrics(query, query_labels, gallery, gallery_labels, cfg: Config) -> dict[str, float]:
    result = retrieval_metrics(query, query_labels, gallery, gallery_labels, ks=cfg.eval.recall_k,
                               chunk_size=cfg.eval.chunk_size, map_at_r=cfg.eval.map_at_r)
    # of the test (gallery) embeddings: ~0 spread, ~1 a cone
    result["mean_norm"] = mean_norm(query if gallery is None else gallery)
    return result


def _test_metrics(embedder: Embedder, splits: dict[str, Dataset], cfg: Config, progress: bool
                  ) -> tuple[dict[str, float], str]:
    *embedded, protocol = _embed_protocol(embedder, splits, progress)
    return _metrics(*embedded, cfg), protocol


def evaluate_with_index(embedder: Embedder, splits: dict[str, Dataset], cfg: Config, factory: str,
                        nprobe: int | None = None, progress: bool = True) -> tuple[dict[str, float], dict]:
    """``evaluate_splits``'s exact metrics of the test protocol, and a ``factory`` index's beside them.

    The index is built in memory over the test (gallery) embeddings, which are embedded once;
    the comparison is ``retrieval.approximation.index_vs_exact``'s (metrics of both searches,
    k-NN recall, time per query). A 'val' split is not scored here.
    """
    from .approximation import index_vs_exact

    query, query_labels, gallery, gallery_labels, protocol = _embed_protocol(embedder, splits, progress)
    comparison = index_vs_exact(query, query_labels, factory, cfg.eval.recall_k, gallery=gallery,
                                gallery_labels=gallery_labels, nprobe=nprobe, map_at_r=cfg.eval.map_at_r)
    log.info("%s (%s): %s", comparison["index_setting"], protocol,
             ", ".join(f"{k}={v:.4f}" for k, v in comparison["index"].items()))
    return _metrics(query, query_labels, gallery, gallery_labels, cfg), comparison


def evaluate_with_rerank(embedder: Embedder, splits: dict[str, Dataset], cfg: Config, spec,
                         progress: bool = True) -> tuple[dict[str, float], dict]:
    """``evaluate_splits``'s exact metrics of the test protocol, and the plain and re-ranked lists' beside them.

    spec: a ``retrieval.rerank.RerankSpec``. The comparison is
    ``retrieval.rerank.plain_vs_reranked``'s (metrics of both lists, time per query of each).
    """
    from .rerank import plain_vs_reranked

    query, query_labels, gallery, gallery_labels, protocol = _embed_protocol(embedder, splits, progress)
    comparison = plain_vs_reranked(query, query_labels, spec, cfg.eval.recall_k, gallery=gallery,
                                   gallery_labels=gallery_labels, map_at_r=cfg.eval.map_at_r)
    log.info("re-ranked %s (%s): %s", comparison["rerank"], protocol,
             ", ".join(f"{k}={v:.4f}" for k, v in comparison["reranked"].items()))
    return _metrics(query, query_labels, gallery, gallery_labels, cfg), comparison


def evaluate_splits(embedder: Embedder, splits: dict[str, Dataset], cfg: Config,
                    progress: bool = True) -> dict[str, float]:
    """Recall@K (K = cfg.eval.recall_k), with cfg.eval.map_at_r MAP@R and R-precision, and ``mean_norm``.

    splits: 'test' (leave-one-out) or 'query' and 'gallery' (query/gallery); datasets yield
    (image, label) with labels comparable across query and gallery. A 'val' split (classes held
    out of training, ``data.val_classes``) adds the same metrics, leave-one-out, prefixed
    ``val_``: what ``best.pt`` is chosen on. 'train' is ignored.
    """
    start = time.perf_counter()
    result, protocol = _test_metrics(embedder, splits, cfg, progress)
    if "val" in splits:
        val = _test_metrics(embedder, {"test": splits["val"]}, cfg, progress)[0]
        result.update({f"val_{k}": v for k, v in val.items()})
        protocol += f"; validation on {len(splits['val'])} images of held-out training classes"
    log.info("evaluation (%s, %.1fs): %s", protocol, time.perf_counter() - start,
             ", ".join(f"{k}={v:.4f}" for k, v in result.items()))
    return result
