"""Device, precision and memory-format choices shared by training and embedding."""
from __future__ import annotations

import contextlib
import logging
import os
import platform

import torch

from .errors import ConfigError
from .schema import PRECISIONS

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto", flag: str = "train.device") -> torch.device:
    """'auto' → cuda when available, else cpu; ConfigError naming ``flag`` for a device this machine lacks."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{flag}={name}: not a device; expected auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{flag}={name}: {device.type} is not supported; expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{flag}={name}: CUDA is not available on this machine; use cpu or auto")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"{flag}={name}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    return device


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 (AVX-512 BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        caps = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # older torch
        caps = ""
    if caps in ("AVX512_BF16", "AMX"):
        return True
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False


def resolve_precision(precision: str, device: torch.device, flag: str = "train.precision") -> torch.dtype | None:
    """Autocast dtype for ``precision`` on ``device`` (None = plain fp32); ConfigError naming ``flag`` when impossible."""
    if precision not in PRECISIONS:
        raise ConfigError(f"{flag}={precision}: expected one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise ConfigError(f"{flag}=fp16 needs a CUDA device; use bf16 or fp32 on CPU")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast context for ``dtype``, or a no-op for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def machine_info() -> dict[str, str | int]:
    """CPU model, core count, GPU (if any) and torch threads: printed beside every benchmark number."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, str | int] = {"cpu": cpu, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                  else (os.cpu_count() or 1), "torch_threads": torch.get_num_threads(),
                                  "bf16_native": str(cpu_supports_bf16())}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
