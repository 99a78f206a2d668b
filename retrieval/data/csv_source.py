"""A CSV listing images: columns ``path,label[,split][,x1,y1,x2,y2]``, paths relative to the CSV.

``label`` may be integers (kept as the class ids) or any text (classes numbered 0.. in sorted
order, the text kept in ``class_name``). ``split``, when present, must be set on every row to
train, test, query or gallery.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from .records import BOX, SPLITS, make_records


def _labels(column: pd.Series, path: Path) -> tuple[np.ndarray, list[str] | None]:
    """Integer class ids, plus the names when the labels are text."""
    if column.isna().any():
        row = int(np.flatnonzero(column.isna().to_numpy())[0]) + 2  # +1 header, +1 one-based
        raise DataError(f"{path}, line {row}: empty label")
    numeric = pd.to_numeric(column, errors="coerce")
    if numeric.notna().all() and (numeric == numeric.round()).all():
        return numeric.to_numpy(dtype=np.int64), None
    names = column.astype(str)
    ids = {name: i for i, name in enumerate(sorted(names.unique()))}
    return names.map(ids).to_numpy(dtype=np.int64), names.tolist()


def read_csv(path: Path) -> pd.DataFrame:
    """Records of the images a CSV lists (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.root: CSV file not found: {path} (for data.name=csv, root is the CSV file)")
    try:
        table = pd.read_csv(path, dtype={"path": str, "split": str}, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable CSV ({err})") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in ("path", "label") if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {list(table.columns)}, "
                        "expected path,label[,split][,x1,y1,x2,y2]")
    if table["path"].isna().any():
        row = int(np.flatnonzero(table["path"].isna().to_numpy())[0]) + 2
        raise DataError(f"{path}, line {row}: empty path")
    labels, names = _labels(table["label"], path)
    official = None
    if "split" in table.columns:
        split = table["split"].str.strip().str.lower()
        bad = split.isna() | ~split.isin(SPLITS)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"{path}, line {row + 2}: split {table['split'].iloc[row]!r} is not one of "
                            f"{', '.join(SPLITS)}")
        official = split.tolist()
    base = path.resolve().parent
    paths = [str(base / p) for p in table["path"].str.strip()]
    boxes = table[BOX].to_numpy(dtype=np.float64) if set(BOX) <= set(table.columns) else None
    extra = {"class_name": names} if names is not None else {}
    return make_records(paths, labels, official, boxes, **extra)
