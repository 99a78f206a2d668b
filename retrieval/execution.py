"""How a network's forward pass runs: eager PyTorch, ``torch.compile``, or ONNX Runtime.

``Embedder`` (``retrieval.embed``) and the training loop ask this module for a callable that
stands in for the network; both keep the network itself (its state dict is what checkpoints
hold). Three ways:

- ``torch``: the network as it is (eager).
- ``torch`` + compile: ``torch.compile`` (TorchInductor by default). Compilation happens on the
  first call (tens of seconds for a ResNet on a CPU) and again for a new input shape; the time
  is logged and kept in ``seconds_compiling``. Where compilation fails (no C++ compiler, an
  unsupported operator, an old CPU) the first call logs one warning that names the reason and
  the network runs eagerly from then on: compiling is an optimisation, never a new failure.
- ``onnxruntime``: the embedding path exported to ONNX (``models.export.export_onnx``) and run
  by ONNX Runtime's CPU provider, fp32. The export happens on the first call, for that call's
  image size. Only ``forward`` (embeddings) is exported: training and the explanation maps
  (gradients) stay on torch.
- ``onnxruntime-int8``: the same export, quantised to int8 on calibration images from the
  gallery (``retrieval.quantize``) before ONNX Runtime opens it. The caller hands the images
  over first (``Embedder.calibrate_on``); quantised models are not cached (they belong to a
  gallery, and quantising takes seconds).
"""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import ConfigError, RetrievalError
from .schema import ONNX_RUNTIMES, RUNTIMES

log = logging.getLogger(__name__)

COMPILE_BACKEND = "inductor"  # torch.compile's default; tests use "eager" (dynamo only) to stay fast


class CompiledOrEager:
    """``torch.compile(module)`` that falls back to ``module`` itself when compilation fails.

    Our own errors (bad images, a wrong config) pass through unchanged: they are not
    compilation failures and would fail eagerly too.
    """

    def __init__(self, module: nn.Module, backend: str | None = None, what: str = "the network"):
        self.module, self.what, self.backend = module, what, backend or COMPILE_BACKEND
        self.compiled = torch.compile(module, backend=self.backend)
        self.failed: str | None = None  # the reason compilation was given up, if it was
        self.seconds_compiling = 0.0
        self._shapes: set[tuple] = set()

    def __call__(self, *args: Tensor) -> object:
        if self.failed is not None:
            return self.module(*args)
        shape = tuple(tuple(a.shape[1:]) for a in args if isinstance(a, Tensor))
        start = time.perf_counter()
        try:
            out = self.compiled(*args)
        except RetrievalError:
            raise
        except Exception as err:  # noqa: BLE001 — any compiler failure: fall back, say why once
            self.failed = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            log.warning("torch.compile of %s failed (%s); running it eagerly instead", self.what, self.failed)
            return self.module(*args)
        if shape not in self._shapes:  # the first call per input shape includes its compilation
            self._shapes.add(shape)
            spent = time.perf_counter() - start
            self.seconds_compiling += spent
            log.info("compiled %s for inputs %s with torch.compile (%s backend) in %.1f s", self.what, shape,
                     self.backend, spent)
        return out


class OnnxNetwork:
    """A network's embedding path run by ONNX Runtime: images (B, 3, H, W) → embeddings (B, D) float32.

    threads: ONNX Runtime's intra-op threads (default: torch's thread count, so both runtimes
    use the same cores). int8: quantise the export (``retrieval.quantize``) with the images set
    in ``calibration`` (N, 3, H, W) before the first call.
    """

    def __init__(self, model: nn.Module, threads: int | None = None, cache_as: tuple[str, dict] | None = None,
                 int8: bool = False):
        try:
            import onnxruntime  # noqa: F401  (checked here: a missing runtime is the flag's error, at start-up)
        except ImportError:
            raise ConfigError(f"--runtime {self._name(int8)} needs onnxruntime (and onnxscript to export): "
                              "pip install 'cbam-cgd-retrieval[export]'") from None
        self.model = model
        self.threads = threads or torch.get_num_threads()
        self.cache_as = cache_as
        self.int8 = int8
        self.calibration: Tensor | None = None
        self.sessions: dict[tuple[int, int], object] = {}
        self.seconds_exporting = 0.0

    def calibrate(self, images: Tensor) -> None:
        """Set the int8 calibration images (N, 3, H, W); sessions quantised on earlier images are dropped."""
        self.calibration = images
        self.sessions.clear()

    @staticmethod
    def _name(int8: bool) -> str:
        return "onnxruntime-int8" if int8 else "onnxruntime"

    def _fp32_model(self, height: int, try_cache: bool) -> bytes:
        """The fp32 ONNX model for ``height`` px: the cached one where ``try_cache`` and it opens, else a new
        export (then cached)."""
        from .models.export import export_onnx
        from .onnx_cache import entry_for

        entry = entry_for(self.cache_as[0], height) if self.cache_as else None
        if try_cache and entry is not None and entry.open(self.threads) is not None:  # opens: not damaged
            return entry.load()[0]
        with tempfile.TemporaryDirectory() as tmp:
            data = export_onnx(self.model, Path(tmp) / "model.onnx", image_size=height).read_bytes()
        if entry is not None:
            entry.store(data, self.cache_as[1])
        return data

    def _session(self, height: int, width: int):
        from .onnx_cache import entry_for, onnx_session

        if height != width:
            raise ConfigError(f"--runtime {self._name(self.int8)}: the export takes square images, got {height}×{width}")
        if self.int8:
            return self._int8_session(height)
        entry = entry_for(self.cache_as[0], height) if self.cache_as else None
        cached = entry.open(self.threads) if entry else None
        if cached is not None:
            log.info("opened the cached ONNX model %s in ONNX Runtime (%d threads)", entry.model_path, self.threads)
            return cached[0]
        start = time.perf_counter()
        session = onnx_session(self._fp32_model(height, try_cache=False), self.threads)
        spent = time.perf_counter() - start
        self.seconds_exporting += spent
        log.info("exported the network to ONNX for %d px and opened it in ONNX Runtime (%d threads) in %.1f s",
                 height, self.threads, spent)
        return session

    def _int8_session(self, height: int):
        from .onnx_cache import onnx_session
        from .quantize import quantize_int8

        if self.calibration is None:
            raise ConfigError("--runtime onnxruntime-int8: no calibration images were given before the first batch "
                              "(Embedder.calibrate_on)")
        if tuple(self.calibration.shape[2:]) != (height, height):
            raise ConfigError(f"--runtime onnxruntime-int8: calibration images are "
                              f"{tuple(self.calibration.shape[2:])} px, the images to embed {height}×{height}")
        start = time.perf_counter()
        calibration = self.calibration.detach().to("cpu", torch.float32).numpy()
        session = onnx_session(quantize_int8(self._fp32_model(height, try_cache=True), calibration), self.threads)
        spent = time.perf_counter() - start
        self.seconds_exporting += spent
        log.info("quantised the network to int8 for %d px on %d calibration images and opened it in ONNX Runtime "
                 "(%d threads) in %.1f s", height, len(self.calibration), self.threads, spent)
        return session

    def __call__(self, images: Tensor) -> Tensor:
        key = (int(images.shape[2]), int(images.shape[3]))
        if key not in self.sessions:
            self.sessions[key] = self._session(*key)
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.sessions[key].run(["embeddings"], {"images": array})[0])


def check_runtime(runtime: str, device: torch.device, precision: str, flag: str = "--runtime") -> None:
    """A runtime this device and precision can use; else ConfigError naming the flag."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"{flag}: '{runtime}' is not one of {', '.join(RUNTIMES)}")
    if runtime in ONNX_RUNTIMES and device.type != "cpu":
        raise ConfigError(f"{flag} {runtime} runs on the CPU here; got device {device} (use --device cpu)")
    if runtime in ONNX_RUNTIMES and precision not in ("auto", "fp32"):
        raise ConfigError(f"--precision {precision}: {flag} {runtime} sets its own precision "
                          "(use --precision auto or fp32)")
