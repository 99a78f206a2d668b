"""Metric-learning image retrieval: CBAM-ResNet + CGD embeddings, PML losses, FAISS search.

The names below are loaded on first use (PEP 562 module ``__getattr__``), so ``import
retrieval.index`` or ``import retrieval.config`` does not pay for torch through this file.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name → the module that defines it.
_EXPORTS = {
    "Config": "schema", "load_config": "config", "seed_everything": "seeding",
    **{name: "errors" for name in ("RetrievalError", "ConfigError", "DataError", "ImageError", "CheckpointError",
                                   "IndexFormatError", "TrainingError")},
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
