"""Evaluate a model on its test splits: embed, then Recall@K / MAP@R (DESIGN.md "Metrics").

``test`` → leave-one-out protocol (CUB, Cars196, SOP); ``query`` + ``gallery`` → query/gallery
protocol (In-Shop). The training loop calls ``evaluate_splits`` every ``train.eval_every`` epochs.
"""
from __future__ import annotations

import logging
import time

import torch
from torch.utils.data import Dataset

from .config import Config
from .embed import embed_dataset
from .errors import DataError
from .embedding_space import mean_norm
from .metrics import retrieval_metrics

log = logging.getLogger(__name__)


def _embed(model: torch.nn.Module, dataset: Dataset, cfg: Config, device, progress: bool):
    from .data import build_eval_loader

    loader = build_eval_loader(dataset, cfg.eval.batch_size, cfg.data.num_workers)
    return embed_dataset(model, loader, device, cfg.train.precision, cfg.train.channels_last, progress)


def _test_metrics(model: torch.nn.Module, splits: dict[str, Dataset], cfg: Config, device,
                  progress: bool) -> tuple[dict[str, float], str]:
    kwargs = dict(ks=cfg.eval.recall_k, chunk_size=cfg.eval.chunk_size, map_at_r=cfg.eval.map_at_r)
    if "test" in splits:
        embeddings, labels = _embed(model, splits["test"], cfg, device, progress)
        result = retrieval_metrics(embeddings, labels, **kwargs)
        protocol = f"leave-one-out on {len(labels)} test images"
    elif "query" in splits and "gallery" in splits:
        query, query_labels = _embed(model, splits["query"], cfg, device, progress)
        embeddings, gallery_labels = _embed(model, splits["gallery"], cfg, device, progress)
        result = retrieval_metrics(query, query_labels, embeddings, gallery_labels, **kwargs)
        protocol = f"{len(query_labels)} queries against {len(gallery_labels)} gallery images"
    else:
        raise DataError(f"evaluate_splits: expected a 'test' split or 'query' and 'gallery' splits, "
                        f"got {sorted(splits)}")
    result["mean_norm"] = mean_norm(embeddings)  # of the test (gallery) embeddings: ~0 spread, ~1 a cone
    return result, protocol


def evaluate_splits(model: torch.nn.Module, splits: dict[str, Dataset], cfg: Config, device,
                    progress: bool = True) -> dict[str, float]:
    """Recall@K (K = cfg.eval.recall_k), with cfg.eval.map_at_r MAP@R and R-precision, and ``mean_norm``.

    splits: 'test' (leave-one-out) or 'query' and 'gallery' (query/gallery); datasets yield
    (image, label) with labels comparable across query and gallery. A 'val' split (classes held
    out of training, ``data.val_classes``) adds the same metrics, leave-one-out, prefixed
    ``val_``: what ``best.pt`` is chosen on. 'train' is ignored.
    """
    start = time.perf_counter()
    result, protocol = _test_metrics(model, splits, cfg, device, progress)
    if "val" in splits:
        val = _test_metrics(model, {"test": splits["val"]}, cfg, device, progress)[0]
        result.update({f"val_{k}": v for k, v in val.items()})
        protocol += f"; validation on {len(splits['val'])} images of held-out training classes"
    log.info("evaluation (%s, %.1fs): %s", protocol, time.perf_counter() - start,
             ", ".join(f"{k}={v:.4f}" for k, v in result.items()))
    return result
