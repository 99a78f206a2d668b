"""The run folder: config.yaml, metrics.csv, last.pt, best.pt, train.log (+ TensorBoard events)."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pandas as pd

from ..files import atomic_path

log = logging.getLogger(__name__)

RUN_FILES = ("config.yaml", "metrics.csv", "last.pt", "best.pt", "train.log")


def prepare_run_dir(path: str | Path, overwrite: bool, resume: bool) -> Path:
    """Create the run folder; an existing non-empty one needs ``overwrite`` (replace) or ``resume``."""
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not resume:
        if not overwrite:
            raise FileExistsError(
                f"run folder {path} already exists; pass --overwrite to replace it or --resume {path} to continue it")
        log.warning("replacing run folder %s (--overwrite)", path)
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def append_metrics(path: str | Path, row: dict) -> pd.DataFrame:
    """Append one epoch's row to metrics.csv (rewritten atomically, so a crash keeps the old file)."""
    path = Path(path)
    frame = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    frame = pd.concat([frame, pd.DataFrame([row])], ignore_index=True)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return frame


def truncate_metrics(path: str | Path, last_epoch: int) -> None:
    """On resume drop rows past the checkpoint's epoch (written after it, before the crash)."""
    path = Path(path)
    if not path.is_file():
        return
    frame = pd.read_csv(path)
    kept = frame[frame["epoch"] <= last_epoch]
    if len(kept) != len(frame):
        with atomic_path(path) as tmp:
            kept.to_csv(tmp, index=False)


def attach_log_file(path: str | Path) -> logging.Handler:
    """Mirror the library's log records into the run folder's train.log."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    logging.getLogger("retrieval").addHandler(handler)
    if logging.getLogger("retrieval").getEffectiveLevel() > logging.INFO:
        logging.getLogger("retrieval").setLevel(logging.INFO)
    return handler


def tensorboard_writer(path: str | Path):
    """A SummaryWriter when tensorboard is installed, else None (it is an optional extra)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.debug("tensorboard not installed: no event files (pip install tensorboard)")
        return None
    return SummaryWriter(str(path))
