"""The run folder: config.yaml, metrics.csv, last.pt, best.pt, train.log (+ TensorBoard events).

Its life: ``prepare_run_dir`` (a new folder, or a staging folder that replaces an earlier run
only once the new one has something to put there), ``commit_epoch`` (each epoch's outputs
commit together, last.pt last), ``recover_run_dir`` (on resume: finish or undo an
interrupted commit, or refuse a folder that no commit could have left).
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pandas as pd

from ..checkpoint import read_checkpoint, save_checkpoint
from ..errors import TrainingError, WriteError
from ..files import atomic_path, atomic_write_bytes, is_temporary, replace_dir, staging_dir

log = logging.getLogger(__name__)

RUN_FILES = ("config.yaml", "metrics.csv", "last.pt", "best.pt", "train.log")
RUN_DIRS = ("tb",)  # TensorBoard events
# best.pt's candidate while an epoch commits: renamed to best.pt once last.pt (the commit point) is written.
BEST_NEXT = ".best.next.pt"
WRITTEN = RUN_FILES + (BEST_NEXT,)  # files written through atomic temporaries (files.atomic_path)


def _foreign(path: Path) -> list[str]:
    """Entries of ``path`` that a run folder of this project does not hold."""
    own = set(RUN_FILES) | set(RUN_DIRS) | {BEST_NEXT}
    return sorted(e.name for e in path.iterdir() if e.name not in own and not is_temporary(e.name, WRITTEN))


def check_replaceable_run(path: Path) -> None:
    """TrainingError unless ``path`` is a run folder of this project (what --overwrite may replace)."""
    foreign = _foreign(path)
    if foreign or not (path / "config.yaml").is_file():
        why = f"it holds {', '.join(foreign[:5])}" if foreign else "it has no config.yaml"
        raise TrainingError(f"train.out_dir: {path} is not a run folder of this project ({why}); refusing to replace "
                            "it with --overwrite (choose another train.out_dir)")


def check_run_dir(path: str | Path, overwrite: bool, resume: bool) -> None:
    """What ``prepare_run_dir`` will refuse, checked before any work (nothing is created)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TrainingError(f"train.out_dir: {path} is a file, not a folder; choose another train.out_dir")
    if resume or not (path.exists() and any(path.iterdir())):
        return
    if not overwrite and not (path / "last.pt").exists() and (path / "config.yaml").is_file():
        raise FileExistsError(f"run folder {path} already exists but holds no committed epoch (no last.pt: the run "
                              "stopped before its first epoch), so it cannot be resumed; pass --overwrite to start "
                              "it again")
    if not overwrite:
        raise FileExistsError(
            f"run folder {path} already exists; pass --overwrite to replace it or --resume {path} to continue it")
    check_replaceable_run(path)


def prepare_run_dir(path: str | Path, overwrite: bool, resume: bool) -> Path:
    """The folder a run writes into now.

    New run: ``path`` itself (created). ``overwrite`` of an existing run folder: a staging folder
    beside it, which ``replace_with_staging`` moves onto ``path`` once the new run has committed
    its first epoch, so a run killed before that leaves the previous one whole. Anything that is
    not a run folder is refused, never deleted.
    """
    path = Path(path)
    check_run_dir(path, overwrite, resume)
    if resume or not (path.exists() and any(path.iterdir())):
        path.mkdir(parents=True, exist_ok=True)
        return path
    staging = staging_dir(path)
    log.warning("--overwrite: the new run is written to %s and replaces %s after its first epoch", staging.name, path)
    return staging


def replace_with_staging(staging: Path, path: Path) -> None:
    """Move the new run's folder onto the old run folder (atomic swap; see files.replace_dir)."""
    replace_dir(staging, path)
    log.info("replaced the earlier run in %s", path)


def commit_epoch(run_dir: Path, state: dict, row: dict, improved: bool) -> None:
    """Write one epoch's outputs so that they commit together: best candidate, metrics row, last.pt, rename.

    last.pt is written last of the three files and is the commit point: it records the epoch and
    the epoch of the best model. A crash before it leaves the previous epoch committed (the new
    row and candidate are dropped on resume); a crash after it only misses the final rename,
    which ``recover_run_dir`` finishes.
    """
    metrics = run_dir / "metrics.csv"
    before = metrics.read_bytes() if metrics.is_file() else None
    try:
        if improved:
            save_checkpoint(run_dir / BEST_NEXT, state)
        append_metrics(metrics, row)
        save_checkpoint(run_dir / "last.pt", state)
    except WriteError:
        _undo_commit(run_dir, before)  # a full disk: leave the folder as the previous epoch committed it
        raise
    if improved:
        publish_best(run_dir)


def _undo_commit(run_dir: Path, metrics_before: bytes | None) -> None:
    """Put back metrics.csv and drop the best candidate of an epoch whose last.pt could not be written.

    ``--resume`` would drop them too (recover_run_dir); undoing at once keeps the folder byte for byte
    as it was. Best effort: a disk that is full may refuse this too.
    """
    (run_dir / BEST_NEXT).unlink(missing_ok=True)
    metrics = run_dir / "metrics.csv"
    try:
        if metrics_before is None:
            metrics.unlink(missing_ok=True)
        else:
            atomic_write_bytes(metrics, metrics_before)
    except (OSError, WriteError) as err:
        log.warning("%s: could not restore it (%s); --resume drops the uncommitted row", metrics, err)


def publish_best(run_dir: Path) -> None:
    """Rename the committed best candidate to best.pt (one atomic rename)."""
    os.replace(run_dir / BEST_NEXT, run_dir / "best.pt")


def _checkpoint_epoch(path: Path) -> int:
    return int(read_checkpoint(path)["epoch"])


def recover_run_dir(run_dir: Path, state: dict) -> None:
    """Bring a run folder to the state its last.pt committed (``state``), or refuse it.

    Finishes or drops an interrupted best.pt, drops metrics rows past the committed epoch, and
    checks that best.pt is the model last.pt names as the best.
    """
    epoch, best_epoch = int(state["epoch"]), state.get("best_epoch")
    candidate = run_dir / BEST_NEXT
    if candidate.exists():
        if best_epoch == epoch and _checkpoint_epoch(candidate) == epoch:
            publish_best(run_dir)
            log.warning("%s: finished the interrupted best.pt of epoch %d", run_dir, epoch)
        else:
            candidate.unlink()
            log.warning("%s: dropped the best.pt candidate of an epoch that never committed", run_dir)
    truncate_metrics(run_dir / "metrics.csv", epoch)
    if best_epoch is None:
        return  # no validation split (or a run folder of an earlier version): no best.pt to check
    best = run_dir / "best.pt"
    found = _checkpoint_epoch(best) if best.is_file() else None
    if found == best_epoch:
        return
    if best_epoch == epoch:  # last.pt is that very model
        with atomic_path(best) as tmp:
            shutil.copyfile(run_dir / "last.pt", tmp)
        log.warning("%s: best.pt restored from last.pt (epoch %d)", run_dir, epoch)
        return
    raise TrainingError(f"{run_dir}: best.pt holds epoch {found} but last.pt records the best model at epoch "
                        f"{best_epoch}; the folder was changed by hand (remove best.pt to go on without it)")


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
