"""Raw records → the configured splits: ``load_records`` (read, split, check).

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

Validation (``data.val_classes: N``): N of the training classes, evenly spaced in id order,
become the ``val`` split. Model selection (``best.pt``) uses it; the test classes are only
ever scored (Musgrave et al. 2020, "A Metric Learning Reality Check", §3.3: selecting on the
test set inflates results).
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ..errors import DataError
from ..schema import DataConfig
from .counts import check_counts
from .records import COLUMNS, SPLITS, check_files
from .sources import SOURCES, read_raw

log = logging.getLogger(__name__)


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


def carve_validation(frame: pd.DataFrame, count: int) -> pd.DataFrame:
    """Move ``count`` training classes (evenly spaced over the sorted train ids) to the ``val`` split."""
    if count <= 0:
        return frame
    ids = np.sort(frame.loc[frame["split"] == "train", "label"].unique())
    if count > len(ids) - 2:
        raise DataError(f"data.val_classes: {count} validation classes leave fewer than 2 of the "
                        f"{len(ids)} training classes to train on")
    chosen = ids[np.round(np.linspace(0, len(ids) - 1, count)).astype(int)]
    frame = frame.copy()
    frame.loc[(frame["split"] == "train") & frame["label"].isin(chosen), "split"] = "val"
    log.info("validation: %d of %d training classes (ids %s)", count, len(ids),
             ", ".join(map(str, chosen[:10])) + (" ..." if count > 10 else ""))
    return frame


def load_records(cfg: DataConfig, check_missing: bool = True) -> pd.DataFrame:
    """One row per image of the configured source and split: path, label, split, x1, y1, x2, y2.

    Counts are checked against the published ones (a difference is a warning). Missing files
    (unless ``check_missing`` is False, as ``verify`` does to list them all) and empty splits are
    DataError.
    """
    raw = read_raw(cfg)
    frame = apply_split(raw, cfg, SOURCES[cfg.name].train_classes)
    if cfg.train_classes is None and cfg.test_classes is None:
        check_counts(frame, cfg.name, cfg.split)
    _check_nonempty(frame, cfg)
    frame = carve_validation(frame, cfg.val_classes)
    if check_missing:
        check_files(frame["path"], str(cfg.root))
    for split, part in frame.groupby("split", sort=False):
        log.info("%s %s: %d images, %d classes", cfg.name, split, len(part), part["label"].nunique())
    return frame
