"""Recall@K and MAP@R over epochs from one or more runs' ``metrics.csv`` (matplotlib, optional).

matplotlib is the ``viz`` extra: it is imported inside the functions, with the Agg backend
(no display needed), and its absence is an ImportError that says what to install.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..errors import DataError
from ..files import atomic_path

log = logging.getLogger(__name__)

_RECALL = re.compile(r"^recall@(\d+)$")


def pyplot():
    """matplotlib.pyplot with the Agg backend; ImportError naming the package when it is missing."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("this picture needs matplotlib: pip install matplotlib "
                          "(or pip install -e '.[viz]')") from None
    matplotlib.use("Agg", force=True)  # files only; never open a window
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, out_png: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` to ``out_png`` atomically (a crash leaves the old picture or none) and close it."""
    out_png = Path(out_png)
    plt = pyplot()
    try:
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, dpi=dpi, format=out_png.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    log.info("wrote %s", out_png)
    return out_png


def recall_columns(frame: pd.DataFrame) -> list[str]:
    """The ``recall@K`` columns of a metrics table, by increasing K."""
    found = [(int(m.group(1)), c) for c in frame.columns if (m := _RECALL.match(str(c)))]
    return [c for _, c in sorted(found)]


def _read_run(run: str | Path | pd.DataFrame, index: int) -> tuple[pd.DataFrame, str]:
    """(metrics table, default label) of one run: a metrics.csv path, a run folder, or a DataFrame."""
    if isinstance(run, pd.DataFrame):
        frame, name, where = run, f"run {index + 1}", f"runs[{index}]"
    else:
        path = Path(run)
        if path.is_dir():
            path = path / "metrics.csv"
        if not path.is_file():
            raise FileNotFoundError(f"metrics file not found: {path}")
        try:
            frame = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: not a readable metrics CSV ({err})") from None
        name, where = path.parent.name or str(path), str(path)
    if "epoch" not in frame.columns:
        raise DataError(f"{where}: no 'epoch' column (columns: {', '.join(map(str, frame.columns))}); "
                        "expected a run's metrics.csv")
    if not recall_columns(frame) and "map@r" not in frame.columns:
        raise DataError(f"{where}: no recall@K or map@r columns (columns: {', '.join(map(str, frame.columns))}); "
                        "was evaluation switched off (train.eval_every=0 writes them only at the end)?")
    return frame, name


def _metric_columns(frames: list[tuple[pd.DataFrame, str]]) -> list[str]:
    """The union of the runs' recall@K columns, by K, then map@r when a run has it: one panel each."""
    metrics: list[str] = []
    for frame, _ in frames:
        metrics += [c for c in recall_columns(frame) if c not in metrics]
    metrics = sorted(metrics, key=lambda c: int(_RECALL.match(c).group(1)))
    if any("map@r" in frame.columns for frame, _ in frames):
        metrics.append("map@r")
    return metrics


def _draw_panels(axes, metrics: list[str], frames: list[tuple[pd.DataFrame, str]], names: list[str]) -> None:
    """One panel per metric, one line per run (in percent); x ticks on whole epochs."""
    from matplotlib.ticker import MaxNLocator

    epochs: set[float] = set()
    for ax, metric in zip(axes, metrics):
        for i, ((frame, _), name) in enumerate(zip(frames, names)):
            if metric not in frame.columns:
                continue
            rows = frame[["epoch", metric]].dropna()
            epochs.update(rows["epoch"].tolist())
            ax.plot(rows["epoch"], 100 * rows[metric], marker="o", markersize=3, label=name, color=f"C{i}")
        ax.set_title("MAP@R" if metric == "map@r" else metric.replace("recall@", "Recall@"))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in axes:  # whole epochs only, also when there is a single point
        if 0 < len(epochs) <= 12:
            ax.set_xticks(sorted(epochs))
            ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _legend_below(fig, names: list[str]) -> None:
    """The runs' legend below the panels, so it never hides a curve."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", markersize=3, color=f"C{i}") for i in range(len(names))]
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 4), fontsize=8, frameon=False)
    rows_needed = (len(names) + 3) // 4
    fig.subplots_adjust(bottom=0.18 + 0.07 * rows_needed)


def recall_curve(runs: str | Path | pd.DataFrame | Sequence[str | Path | pd.DataFrame], out_png: str | Path,
                 labels: Sequence[str] | None = None, title: str | None = None) -> Path:
    """Plot every ``recall@K`` column and ``map@r`` against ``epoch``, one panel per metric, one line per run.

    runs: one or more metrics.csv paths, run folders or DataFrames (columns ``epoch``,
    ``recall@K``..., ``map@r``; rows without an evaluation are skipped). labels: one per run
    (default: the run folder's name). Values are drawn in percent. Returns ``out_png``.
    """
    if isinstance(runs, (str, Path, pd.DataFrame)):
        runs = [runs]
    runs = list(runs)
    if not runs:
        raise ValueError("recall_curve: expected at least one metrics.csv or DataFrame")
    if labels is not None and len(labels) != len(runs):
        raise ValueError(f"recall_curve: {len(labels)} labels for {len(runs)} runs")
    frames = [_read_run(run, i) for i, run in enumerate(runs)]
    names = list(labels) if labels is not None else [name for _, name in frames]
    metrics = _metric_columns(frames)
    fig, axes = pyplot().subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.2), squeeze=False, sharex=True)
    _draw_panels(axes[0], metrics, frames, names)
    axes[0][0].set_ylabel("%")
    fig.suptitle(title or "Retrieval metrics over epochs (test classes)")
    fig.tight_layout()
    if len(runs) > 1:
        _legend_below(fig, names)
    return save_figure(fig, out_png)
