"""The records table every source produces, and ``load_records``: read, split, check.

A records table has one row per image: ``path`` (absolute str), ``label`` (int, the data
set's own class id), ``split`` (train | test | query | gallery), and the bounding box
``x1, y1, x2, y2`` in pixels (NaN when unknown; PIL crop convention: 0-based, end exclusive).
A source may add columns (``class_name``).

Splitting (``data.split`` / ``data.train_classes`` / ``data.test_classes``):
- ``classes`` (default), no ranges: the source's standard metric-learning split
  (CUB 1–100 / 101–200, Cars 1–98 / 99–196, SOP and In-Shop their files, CSV its split
  column, a folder its train/ test/ sub-trees, otherwise the first half of the classes in
  id order for training and the rest for testing).
- ``classes`` with ranges: a source with a query/gallery protocol keeps it and keeps the
  train rows whose class is in ``train_classes`` and the query/gallery rows whose class is
  in ``test_classes``; any other source is re-split by class id, train = ``train_classes``,
  test = ``test_classes`` (either one defaults to all classes not in the other).
- ``official``: the image-level split shipped with the data (CUB ``train_test_split.txt``,
  the Cars196 ``test`` flag, SOP / In-Shop files, a CSV split column, folder sub-trees).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..config import DataConfig
from ..errors import DataError
from .counts import check_counts

log = logging.getLogger(__name__)

SPLITS = ("train", "test", "query", "gallery")
BOX = ["x1", "y1", "x2", "y2"]
COLUMNS = ["path", "label", "split", *BOX]


def make_records(paths: list[str], labels, official: list | None = None, boxes=None, **extra) -> pd.DataFrame:
    """Build a records table; ``official`` holds the source's own split (None where it has none)."""
    n = len(paths)
    frame = pd.DataFrame({"path": [str(p) for p in paths], "label": np.asarray(labels, dtype=np.int64)})
    frame["official"] = pd.Series(official if official is not None else [None] * n, dtype=object)
    box = np.full((n, 4), np.nan) if boxes is None else np.asarray(boxes, dtype=np.float64).reshape(n, 4)
    for i, col in enumerate(BOX):
        frame[col] = box[:, i]
    for key, values in extra.items():
        frame[key] = list(values)
    return frame


def read_lines(path: Path, min_fields: int) -> list[list[str]]:
    """Whitespace-split non-empty lines of an annotation file; DataError naming file and line when short."""
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < min_fields:
            raise DataError(f"{path}, line {number}: expected {min_fields} fields, got {line!r}")
        rows.append(fields)
    return rows


def _in_range(labels: pd.Series, rng: list[int] | None) -> pd.Series:
    return labels.between(rng[0], rng[1]) if rng is not None else pd.Series(True, index=labels.index)


def _split_by_ranges(frame: pd.DataFrame, train: list[int] | None, test: list[int] | None) -> pd.Series:
    """train = ids in ``train`` (default: not in ``test``), test likewise; other rows dropped (None)."""
    in_train = _in_range(frame["label"], train) if train is not None else ~_in_range(frame["label"], test)
    in_test = _in_range(frame["label"], test) if test is not None else ~in_train
    split = pd.Series(None, index=frame.index, dtype=object)
    split[in_test] = "test"
    split[in_train] = "train"  # overlapping ranges are the user's choice; train wins for a shared id
    if train is not None and test is not None and (in_train & in_test).any():
        raise DataError(f"data.train_classes {train} and data.test_classes {test} overlap: "
                        "the metric-learning protocol needs disjoint classes")
    return split


def _halves(frame: pd.DataFrame) -> list[int]:
    ids = np.sort(frame["label"].unique())
    return [int(ids[0]), int(ids[(len(ids) + 1) // 2 - 1])] if len(ids) else [0, 0]


def apply_split(frame: pd.DataFrame, cfg: DataConfig, standard: list[int] | None) -> pd.DataFrame:
    """Set the ``split`` column from the config (see the module docstring); drop unused rows.

    ``standard``: the train class range of the source's metric-learning split, or None when the
    source's own split column already is one (SOP, In-Shop, CSV/folder with splits).
    """
    official = frame["official"]
    has_official = official.notna().all() and len(frame) > 0
    protocol = has_official and official.isin(["query", "gallery"]).any()
    train, test = cfg.train_classes, cfg.test_classes
    if cfg.split == "official":
        if not has_official:
            raise DataError(f"data.split=official: data.name={cfg.name} at {cfg.root} has no split of its own; "
                            "use data.split=classes")
        split = official.copy()
    elif train is None and test is None:
        if standard is None and has_official:
            split = official.copy()
        else:
            split = _split_by_ranges(frame, standard or _halves(frame), None)
    elif protocol:
        keep = ((official == "train") & _in_range(frame["label"], train)) | (
            official.isin(["query", "gallery"]) & _in_range(frame["label"], test))
        split = official.where(keep, None)
    else:
        split = _split_by_ranges(frame, train, test)
    bad = set(split.dropna()) - set(SPLITS)
    if bad:
        raise DataError(f"{cfg.root}: unknown split value(s) {sorted(bad)}; expected {', '.join(SPLITS)}")
    out = frame.assign(split=split).dropna(subset=["split"]).drop(columns="official")
    return out[COLUMNS + [c for c in out.columns if c not in COLUMNS]].reset_index(drop=True)


def check_files(frame: pd.DataFrame, root: str, show: int = 5) -> None:
    """DataError naming the first missing files (one stat per image: fast even for SOP's 120k)."""
    missing = [p for p in frame["path"] if not os.path.isfile(p)]
    if missing:
        raise DataError(f"{root}: {len(missing)} of {len(frame)} image files are missing, e.g. "
                        + ", ".join(missing[:show]))


def _check_nonempty(frame: pd.DataFrame, cfg: DataConfig) -> None:
    if frame.empty:
        raise DataError(f"{cfg.root}: no images found for data.name={cfg.name}")
    parts = set(frame["split"])
    wanted = ["train", "query", "gallery"] if parts & {"query", "gallery"} else ["train", "test"]
    empty = [s for s in wanted if s not in parts]
    if empty:
        raise DataError(
            f"{cfg.root}: the {'/'.join(empty)} split has no images (train_classes={cfg.train_classes}, "
            f"test_classes={cfg.test_classes}, split={cfg.split}; class ids present: "
            f"{int(frame['label'].min())}..{int(frame['label'].max())}); set data.train_classes / data.test_classes")


def _readers() -> dict[str, tuple[Callable[[Path], pd.DataFrame], list[int] | None]]:
    """data.name → (reader(root) → raw records with ``official``, standard train class range)."""
    from . import cars, csv_source, cub, folder, inshop, sop

    return {
        "cub": (cub.read_cub, [1, 100]),
        "cars": (cars.read_cars, [1, 98]),
        "sop": (sop.read_sop, None),
        "inshop": (inshop.read_inshop, None),
        "folder": (folder.read_folder, None),
        "csv": (csv_source.read_csv, None),
    }


def read_raw(cfg: DataConfig) -> pd.DataFrame:
    """The source's records before splitting (column ``official`` = its own split or None)."""
    if cfg.name == "synthetic":
        from .csv_source import read_csv
        from .synthetic import generate

        root = generate(cfg.root, num_classes=cfg.synthetic_classes, per_class=cfg.synthetic_per_class,
                        size=cfg.synthetic_size)
        return read_csv(root / "labels.csv")
    readers = _readers()
    if cfg.name not in readers:
        raise DataError(f"data.name: unknown source '{cfg.name}'; expected synthetic, {', '.join(readers)}")
    root = Path(cfg.root).expanduser()
    if not root.exists():
        raise DataError(f"data.root: {root} does not exist (data.name={cfg.name})")
    return readers[cfg.name][0](root.resolve())


def load_records(cfg: DataConfig, check_missing: bool = True) -> pd.DataFrame:
    """One row per image of the configured source and split: path, label, split, x1, y1, x2, y2.

    Counts are checked against the published ones (a difference is a warning). Missing files
    (unless ``check_missing`` is False, as ``verify`` does to list them all) and empty splits are
    DataError.
    """
    raw = read_raw(cfg)
    standard = _readers()[cfg.name][1] if cfg.name in _readers() else None
    if raw.empty:
        raise DataError(f"{cfg.root}: no images found for data.name={cfg.name}")
    frame = apply_split(raw, cfg, standard)
    if cfg.train_classes is None and cfg.test_classes is None:
        check_counts(frame, cfg.name, cfg.split)
    _check_nonempty(frame, cfg)
    if check_missing:
        check_files(frame, cfg.root)
    for split, part in frame.groupby("split", sort=False):
        log.info("%s %s: %d images, %d classes", cfg.name, split, len(part), part["label"].nunique())
    return frame
