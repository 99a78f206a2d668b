"""The records table every data source produces, and the helpers its readers share.

A records table has one row per image: ``path`` (absolute str), ``label`` (int, the data
set's own class id), ``split`` (train | test | query | gallery; ``official`` before
splitting: the source's own split, or None), and the bounding box ``x1, y1, x2, y2`` in
pixels (NaN when unknown; PIL crop convention: 0-based, end exclusive). A source may add
columns (``class_name``). Readers live in one module per format (``cub.py``, ``sop.py``, ...);
``sources.py`` names them, ``splits.py`` turns raw records into splits.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from ..errors import DataError

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


def check_files(paths: Iterable[str], source: str, show: int = 5) -> None:
    """DataError naming ``source`` and the first missing files (one stat per image: fast even for SOP's 120k)."""
    paths = list(paths)
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f"{source}: {len(missing)} of {len(paths)} image files are missing, e.g. "
                        + ", ".join(missing[:show]) + (" ..." if len(missing) > show else "") + " (not found)")
