"""Export the embedding path (``RetrievalNet.forward``) to TorchScript or ONNX, and check the file against the model.

Both take an fp32 CPU copy of the model in eval mode (the caller's model is left as it
was), name the input ``images`` (batch, 3, H, W) and the output ``embeddings``
(batch, D) L2-normalised, keep the batch size free, and write the file atomically.
``export`` writes either format and ``parity`` measures how far the file's embeddings are
from the eager model's (the command ``retrieval-export`` runs both).
"""
from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..files import atomic_path
from ..onnx_cache import onnx_session
from .net import RetrievalNet

log = logging.getLogger(__name__)


def _export_copy(model: RetrievalNet) -> RetrievalNet:
    return copy.deepcopy(model).float().cpu().eval().to(memory_format=torch.contiguous_format)


def export_torchscript(model: RetrievalNet, path: str | Path, example: Tensor) -> Path:
    """Trace ``model.forward`` on ``example`` (B, 3, H, W) and save it; load with ``torch.jit.load``.

    The network has no data-dependent control flow, so a trace is exact; the input checks
    of ``forward`` run in eager mode only.
    """
    net = _export_copy(model)
    example = example.detach().float().cpu().contiguous()
    net.check_images(example)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.*deprecated")
        traced = torch.jit.trace(net, example)
    with atomic_path(path) as tmp:
        traced.save(str(tmp))
    log.info("wrote TorchScript embedding model %s (input %s)", path, tuple(example.shape))
    return Path(path)


def export_onnx(model: RetrievalNet, path: str | Path, image_size: int, opset: int = 18) -> Path:
    """Write an ONNX model: ``images`` (batch, 3, image_size, image_size) → ``embeddings`` (batch, D).

    Uses torch's torch.export-based exporter (needs onnxscript); without onnxscript it falls
    back to the legacy TorchScript-based exporter, which torch marks for removal.
    """
    net = _export_copy(model)
    example = torch.randn(2, 3, image_size, image_size)
    net.check_images(example)
    names = dict(input_names=["images"], output_names=["embeddings"], opset_version=opset)
    with atomic_path(path) as tmp, torch.no_grad():
        try:
            import onnxscript  # noqa: F401  (the exporter's dependency; checked here to pick the path)

            torch.onnx.export(net, (example,), str(tmp), dynamo=True, external_data=False, verbose=False,
                              dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}}, **names)
        except ImportError:
            log.warning("onnxscript is not installed; using torch's legacy ONNX exporter (pip install onnxscript)")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(net, (example,), str(tmp), dynamo=False,
                                  dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}}, **names)
    log.info("wrote ONNX embedding model %s (input batch×3×%d×%d, opset %d)", path, image_size, image_size, opset)
    return Path(path)


def onnx_embed(path: str | Path, images: np.ndarray | Tensor) -> np.ndarray:
    """Run an exported ONNX model with onnxruntime: images (B, 3, H, W) → embeddings (B, D) float32."""
    if isinstance(images, Tensor):
        images = images.detach().float().cpu().numpy()
    session = onnx_session(path)
    return session.run(["embeddings"], {"images": np.ascontiguousarray(images, dtype=np.float32)})[0]


FORMATS = ("onnx", "torchscript")


def torchscript_embed(path: str | Path, images: Tensor) -> np.ndarray:
    """Run an exported TorchScript model: images (B, 3, H, W) → embeddings (B, D) float32."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated in torch 2.9+
        loaded = torch.jit.load(str(path))
    with torch.no_grad():
        return loaded(images.detach().float().cpu()).numpy()


def export(model: RetrievalNet, path: str | Path, fmt: str, image_size: int) -> Path:
    """Write ``model``'s embedding path to ``path`` as ``fmt`` (onnx | torchscript) for image_size × image_size input."""
    if fmt == "onnx":
        return export_onnx(model, path, image_size)
    if fmt == "torchscript":
        return export_torchscript(model, path, torch.randn(2, 3, image_size, image_size))
    raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {fmt!r}")


def parity(model: RetrievalNet, path: str | Path, fmt: str, image_size: int, batch: int = 3, seed: int = 0) -> float:
    """Largest |exported - eager| over the embeddings of ``batch`` seeded random images (a batch size other
    than the export example's, so a fixed batch dimension shows)."""
    images = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    exported = onnx_embed(path, images) if fmt == "onnx" else torchscript_embed(path, images)
    with torch.no_grad():
        eager = _export_copy(model)(images).numpy()
    return float(np.abs(exported - eager).max())
