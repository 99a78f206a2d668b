"""Checkpoint files: one ``*.pt`` dict, written atomically, read with ``weights_only=True``.

Layout (DESIGN.md "Checkpoint"): ``model`` (state dict), ``loss`` (loss state, e.g. proxies),
``optimizer``, ``scheduler``, ``epoch``, ``config`` (resolved, plain dict), ``num_classes``,
``metrics``, ``rng``, ``versions``. Only tensors and plain python values are stored, so
loading never executes code.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from .config import config_from_dict
from .errors import CheckpointError, ConfigError
from .files import atomic_path, write_error
from .models import build_model
from .provenance import versions
from .schema import Config

log = logging.getLogger(__name__)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (plus package versions) atomically: temp file, fsync, rename."""
    state = dict(state)
    state.setdefault("versions", versions())
    with atomic_path(path) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as err:  # torch's stream writer reports a full disk as "file write failed"
            raise write_error(path, err) from None


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True``; clear errors for missing/corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated/foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    missing = [k for k in ("model", "config", "num_classes") if k not in state] if isinstance(state, dict) else ["model"]
    if missing:
        raise CheckpointError(f"{path}: not a retrieval checkpoint (missing keys: {', '.join(missing)})")
    return state


def checkpoint_config(state: dict[str, Any], path: str | Path = "checkpoint", resume: bool = False) -> Config:
    """The resolved Config stored in a checkpoint, checked for what opens it.

    resume: a run continues from it, so the training sections (loss, optimiser) are checked too;
    otherwise only what inference reads (model, data transform, evaluation; ``config.TRAINING_SECTIONS``).
    """
    try:
        return config_from_dict(state["config"], stored=True, inference=not resume)
    except ConfigError as err:
        raise CheckpointError(f"{path}: stored config is not valid for this version: {err}") from None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Config, dict]:
    """Build the model a checkpoint was trained with and load its weights (eval mode)."""
    state = read_checkpoint(path)
    cfg = checkpoint_config(state, path)
    model = build_model(cfg.model, num_classes=int(state["num_classes"]), load_weights=False)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the model its config describes: {err}") from None
    return model.to(device).eval(), cfg, state
