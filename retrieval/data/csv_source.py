"""A CSV listing images: columns ``path,label[,split][,x1,y1,x2,y2][,mask]``, paths relative to the CSV.

The file is read by ``tables.read_image_csv``, the reader galleries and queries use too.
``label`` may be integers (kept as the class ids) or any text (classes numbered 0.. in sorted
order, the text kept in ``class_name``). ``split``, when present, must be set on every row to
train, test, query or gallery. ``mask``, when present, names a binary object-mask image
(non-zero = object) per row, relative to the CSV like ``path`` (the synthetic data writes one);
it is kept as an absolute path in the records' ``mask`` column ("" where a row has none).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from .records import BOX, SPLITS, make_records
from .tables import read_image_csv


def _labels(column: pd.Series, path: Path) -> tuple[np.ndarray, list[str] | None]:
    """Integer class ids, plus the names when the labels are text."""
    empty = np.flatnonzero((column == "").to_numpy())
    if len(empty):
        raise DataError(f"{path}, line {empty[0] + 2}: empty label")  # +1 header, +1 one-based
    numeric = pd.to_numeric(column, errors="coerce")
    if numeric.notna().all() and (numeric == numeric.round()).all():
        return numeric.to_numpy(dtype=np.int64), None
    ids = {name: i for i, name in enumerate(sorted(column.unique()))}
    return column.map(ids).to_numpy(dtype=np.int64), column.tolist()


def _split(column: pd.Series, path: Path) -> list[str]:
    split = column.str.lower()
    bad = np.flatnonzero((~split.isin(SPLITS)).to_numpy())
    if len(bad):
        raise DataError(f"{path}, line {bad[0] + 2}: split {column.iloc[bad[0]]!r} is not one of {', '.join(SPLITS)}")
    return split.tolist()


def _boxes(table: pd.DataFrame, path: Path) -> np.ndarray | None:
    if not set(BOX) <= set(table.columns):
        return None
    boxes = table[BOX].apply(pd.to_numeric, errors="coerce")
    bad = np.flatnonzero((boxes.isna() & (table[BOX] != "")).any(axis=1).to_numpy())
    if len(bad):
        raise DataError(f"{path}, line {bad[0] + 2}: box {table[BOX].iloc[bad[0]].tolist()} is not numbers")
    return boxes.to_numpy(dtype=np.float64)


def read_csv(path: Path) -> pd.DataFrame:
    """Records of the images a CSV lists (see the module docstring)."""
    path = Path(path)
    table = read_image_csv(path, "data.root")
    if "label" not in table.columns:
        raise DataError(f"{path}: missing column(s) ['label']; found {list(table.columns)}, "
                        "expected path,label[,split][,x1,y1,x2,y2]")
    labels, names = _labels(table["label"], path)
    official = _split(table["split"], path) if "split" in table.columns else None
    extra = {"class_name": names} if names is not None else {}
    if "mask" in table.columns:
        base = Path(path).expanduser().resolve().parent
        extra["mask"] = [str((base / m).resolve()) if m else "" for m in table["mask"]]
    return make_records(table["path"].tolist(), labels, official, _boxes(table, path), **extra)
