"""Batched embedding extraction.

``embed_dataset`` runs a model over a loader in inference mode with the fast path for the
device: bf16 autocast + channels_last on CPUs with native bf16 (about 2× for ResNets on
AVX-512 BF16 / AMX), AMP on CUDA; the output is float32 and re-normalised (bf16 rounding
moves norms by ~1e-3). ``embed_table`` embeds the images of an image table
(``retrieval.data.tables``).
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .errors import DataError, RetrievalError
from .runtime import autocast, resolve_precision
from .progress import progress as progress_bar

log = logging.getLogger(__name__)


def _convs_channels_last(model: torch.nn.Module) -> bool:
    weights = [p for p in model.parameters() if p.dim() == 4 and p.shape[-1] > 1]
    return bool(weights) and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)


def _unwrap_worker_error(err: RetrievalError) -> RetrievalError:
    """A data-loader worker re-raises our errors with its traceback in the message; keep the original line."""
    text = str(err)
    if "Original Traceback" not in text:
        return err
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    name = type(err).__name__
    return type(err)(last.split(f"{name}: ", 1)[-1])


def forward_embeddings(model: torch.nn.Module, images: torch.Tensor, device: torch.device,
                       dtype: torch.dtype | None, memory_format: torch.memory_format) -> torch.Tensor:
    """images (B, 3, H, W) → embeddings (B, D) float32 L2-normalised on the CPU; the model must be in eval mode."""
    images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
    with torch.inference_mode(), autocast(device, dtype):
        out = model(images)
    return F.normalize(out.float(), dim=1).cpu()


def embed_dataset(model: torch.nn.Module, loader, device: torch.device | str, precision: str = "auto",
                  channels_last: bool = True, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Embed every batch of ``loader`` (yielding (images (B, 3, H, W), labels (B,))).

    Returns (embeddings (N, D) float32 L2-normalised, labels (N,) int64) in loader order. The
    model's train/eval mode and memory format are restored afterwards (the training loop
    calls this between epochs).
    """
    device = torch.device(device)
    dtype = resolve_precision(precision, device)
    was_training = model.training
    convert = channels_last and not _convs_channels_last(model)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if convert:
        model.to(memory_format=torch.channels_last)
    model.eval()
    total = len(loader.dataset) if hasattr(loader, "dataset") else None
    chunks, labels = [], []
    try:
        with torch.inference_mode(), progress_bar(total=total, desc="embed", unit="img", disable=not progress,
                                          leave=False) as bar:
            for images, batch_labels in loader:
                chunks.append(forward_embeddings(model, images, device, dtype, memory_format))
                labels.append(torch.as_tensor(batch_labels, dtype=torch.int64).reshape(-1))
                bar.update(len(images))
    except RetrievalError as err:
        raise _unwrap_worker_error(err) from None
    finally:
        model.train(was_training)
        if convert:
            model.to(memory_format=torch.contiguous_format)
    if not chunks:
        raise DataError("embed_dataset: the loader yielded no images")
    return torch.cat(chunks).numpy(), torch.cat(labels).numpy()


def embed_table(model: torch.nn.Module, table: pd.DataFrame, transform, device: torch.device | str,
                batch_size: int = 64, num_workers: int = 2, precision: str = "auto",
                channels_last: bool = True, progress: bool = True) -> np.ndarray:
    """Embeddings (N, D) float32 L2-normalised of the images ``table["path"]`` lists, in order."""
    from .data import PathsDataset, build_eval_loader

    loader = build_eval_loader(PathsDataset(table["path"].tolist(), transform), batch_size, num_workers)
    embeddings, _ = embed_dataset(model, loader, device, precision, channels_last, progress)
    return embeddings
