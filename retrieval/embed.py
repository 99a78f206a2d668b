"""How a network embeds images: ``Embedder``, the one owner of device, dtype and memory format.

An ``Embedder`` holds a network with the device it runs on, its autocast dtype (the precision
choice resolved once, here: bf16 autocast on CPUs with native bf16, about 2× for ResNets on
AVX-512 BF16 / AMX; AMP on CUDA) and its memory format (channels_last: faster convolutions on
CPU and tensor cores). ``embed`` turns a batch into float32 embeddings, re-normalised (bf16
rounding moves norms by ~1e-3); ``embed_loader``, ``embed_dataset`` and ``embed_table`` run it
over a loader, a dataset or an image table (``retrieval.data.tables``). Training (its
evaluation and its autocast), the commands, the benchmarks and the service all ask an
Embedder. How the forward pass runs — eager, ``torch.compile``, or ONNX Runtime — is the
Embedder's ``runtime`` / ``compile`` choice (``retrieval.execution``).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .config import to_dict
from .errors import ConfigError, DataError, RetrievalError
from .progress import progress as progress_bar
from .runtime import autocast, resolve_precision
from .execution import CompiledOrEager, OnnxNetwork, check_runtime
from .schema import ONNX_RUNTIMES, Config

log = logging.getLogger(__name__)


def _unwrap_worker_error(err: RetrievalError) -> RetrievalError:
    """A data-loader worker re-raises our errors with its traceback in the message; keep the original line."""
    text = str(err)
    if "Original Traceback" not in text:
        return err
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    name = type(err).__name__
    return type(err)(last.split(f"{name}: ", 1)[-1])


class Embedder:
    """A network placed on ``device`` in ``memory_format``, run under autocast ``dtype`` (None = fp32).

    precision: auto | fp32 | bf16 | fp16 (``runtime.PRECISIONS``); a choice this device cannot
    run is a ConfigError naming ``flag``. The network is moved to the device and memory format
    once, here: the Embedder owns its placement (the training loop's model already has it).
    batch_size, workers: how ``embed_dataset`` / ``embed_table`` load images; transform: what
    ``embed_table`` applies to each decoded image (a checkpoint's test transform).
    runtime: torch | onnxruntime (CPU, fp32) | onnxruntime-int8 (CPU, int8, calibrated first with
    ``calibrate_on`` on gallery images, ``retrieval.quantize``); compile: a ``torch.compile`` backend name
    ("inductor") or None (``retrieval.execution``; torch runtime only). cache_as: (checkpoint
    sha256, description) under which onnxruntime keeps its export (``retrieval.onnx_cache``).
    """

    def __init__(self, model: torch.nn.Module, device: torch.device | str = "cpu", precision: str = "auto",
                 channels_last: bool = True, batch_size: int = 64, workers: int = 2, transform=None,
                 flag: str = "--precision", runtime: str = "torch", compile: str | None = None,
                 cache_as: tuple[str, dict] | None = None):
        self.device = torch.device(device)
        check_runtime(runtime, self.device, precision)
        if runtime in ONNX_RUNTIMES and compile:
            raise ConfigError("--compile applies to --runtime torch; ONNX Runtime optimises its own graph")
        self.runtime = runtime
        self.dtype = resolve_precision(precision, self.device, flag=flag) if runtime == "torch" else None
        channels_last = channels_last and runtime == "torch"
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.batch_size, self.workers, self.transform = batch_size, workers, transform
        self._run = self.model
        if runtime in ONNX_RUNTIMES:
            self._run = OnnxNetwork(self.model, cache_as=cache_as, int8=runtime == "onnxruntime-int8")
        elif compile:
            self._run = CompiledOrEager(self.model, backend=compile, what="the embedding network")

    def calibrate_on(self, dataset) -> None:
        """Give ``--runtime onnxruntime-int8`` its calibration images: ``quantize.CALIBRATION_IMAGES`` spread
        evenly over ``dataset`` (yielding (image tensor, label); the gallery to embed). A no-op for other runtimes."""
        if self.runtime != "onnxruntime-int8":
            return
        from .quantize import calibration_positions

        self._run.calibrate(torch.stack([dataset[i][0] for i in calibration_positions(len(dataset))]))

    def calibrate_on_table(self, table: pd.DataFrame) -> None:
        """``calibrate_on`` the images ``table["path"]`` lists, through ``transform``."""
        from .data import PathsDataset

        self.calibrate_on(PathsDataset(table["path"].tolist(), self.transform))

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        with torch.inference_mode(), autocast(self.device, self.dtype):
            return self._run(images)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) → embeddings (B, D) float32 L2-normalised on the CPU; the model must be in eval mode."""
        return F.normalize(self._forward(images).float(), dim=1).cpu()

    def embed_loader(self, loader, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Embed every batch of ``loader`` (yielding (images (B, 3, H, W), labels (B,))).

        Returns (embeddings (N, D) float32 L2-normalised, labels (N,) int64) in loader order. The
        model's train/eval mode is restored afterwards (the training loop calls this between epochs).
        """
        was_training = self.model.training
        self.model.eval()
        total = len(loader.dataset) if hasattr(loader, "dataset") else None
        chunks, labels = [], []
        try:
            with torch.inference_mode(), progress_bar(total=total, desc="embed", unit="img", disable=not progress,
                                                      leave=False) as bar:
                for images, batch_labels in loader:
                    chunks.append(self.embed(images))
                    labels.append(torch.as_tensor(batch_labels, dtype=torch.int64).reshape(-1))
                    bar.update(len(images))
        except RetrievalError as err:
            raise _unwrap_worker_error(err) from None
        finally:
            self.model.train(was_training)
        if not chunks:
            raise DataError("embed_loader: the loader yielded no images")
        return torch.cat(chunks).numpy(), torch.cat(labels).numpy()

    def embed_dataset(self, dataset, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings (N, D), labels (N,)) of a dataset yielding (image tensor, label), in dataset order."""
        from .data import build_eval_loader

        return self.embed_loader(build_eval_loader(dataset, self.batch_size, self.workers), progress)

    def embed_table(self, table: pd.DataFrame, progress: bool = True) -> np.ndarray:
        """Embeddings (N, D) float32 L2-normalised of the images ``table["path"]`` lists, in order (``transform``)."""
        from .data import PathsDataset

        return self.embed_dataset(PathsDataset(table["path"].tolist(), self.transform), progress)[0]


class CheckpointEmbedder(Embedder):
    """A checkpoint's network in eval mode as an ``Embedder``, with its config, file, sha256 and test transform."""

    def __init__(self, model: torch.nn.Module, cfg: Config, checkpoint: Path, sha256: str, device: torch.device,
                 batch_size: int, workers: int = 2, precision: str = "auto", runtime: str = "torch",
                 compile: bool = False):
        from .data import IMAGENET_MEAN, IMAGENET_STD, build_transforms
        from .execution import COMPILE_BACKEND
        from .onnx_cache import describe

        description = describe(cfg.model.embedding_dim, IMAGENET_MEAN, IMAGENET_STD, cfg.eval)
        super().__init__(model.eval(), device, precision, batch_size=batch_size, workers=workers,
                         transform=build_transforms(cfg.data, train=False), runtime=runtime,
                         compile=COMPILE_BACKEND if compile else None, cache_as=(sha256, description))
        self.cfg, self.checkpoint, self.sha256 = cfg, Path(checkpoint), sha256

    @property
    def eval_settings(self):
        """The checkpoint's ``eval`` section (what ``CachedOnnxEmbedder`` carries too)."""
        return self.cfg.eval

    @property
    def dim(self) -> int:
        return int(self.cfg.model.embedding_dim)

    def manifest_fields(self, source: str) -> dict:
        """What an index folder records of the model that embedded it (``check_compatible`` reads the hash)."""
        return {"checkpoint": str(self.checkpoint.resolve()), "checkpoint_sha256": self.sha256, "source": source,
                "image_size": self.cfg.data.image_size, "config": to_dict(self.cfg)}


def open_embedder(checkpoint: str | Path, device: str = "auto", batch_size: int | None = None, workers: int = 2,
                  precision: str = "auto", device_flag: str = "--device", runtime: str = "torch",
                  compile: bool = False) -> CheckpointEmbedder:
    """Load ``checkpoint`` (weights_only) on ``device``; batch_size defaults to the checkpoint's eval.batch_size.

    runtime, compile: how the network runs (``retrieval.execution``: torch or onnxruntime; torch.compile).
    """
    from .checkpoint import load_model
    from .files import sha256_file
    from .runtime import resolve_device

    dev = resolve_device(device, flag=device_flag)
    model, cfg, _ = load_model(checkpoint, dev)
    return CheckpointEmbedder(model, cfg, Path(checkpoint), sha256_file(checkpoint), dev,
                              batch_size or cfg.eval.batch_size, workers, precision, runtime, compile)
