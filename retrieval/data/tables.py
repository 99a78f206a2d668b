"""Image tables: the images a gallery or a query names, from a folder, a CSV file or a list of paths.

A table has one row per image: ``path`` (absolute), ``label`` (text, "" when unknown),
``split`` (text, "" when none), plus any other CSV columns. The rules are those of the
training sources: ``list_images`` scans folders as ``folder.py`` does, ``read_image_csv``
reads CSV files for both ``csv_source.py`` and ``table_from_csv``, and ``check_files``
names missing files, so training, galleries and queries accept the same inputs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import DataError
from .images import IMAGE_EXTENSIONS, list_images
from .records import check_files

TABLE_COLUMNS = ["path", "label", "split"]


def read_image_csv(csv_path: str | Path, source: str) -> pd.DataFrame:
    """Every column of a CSV as stripped text, ``path`` made absolute (relative paths are relative to the CSV).

    source: the flag or key the file came from, for messages ("--csv", "data.root"). DataError
    for a missing or unreadable file, no ``path`` column, no rows, or an empty path (with its line).
    """
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise DataError(f"{source}: CSV file not found: {csv_path}")
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{csv_path}: not a readable CSV ({err})") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    if "path" not in table.columns:
        raise DataError(f"{csv_path}: missing column(s) ['path'] (no 'path' column); found {list(table.columns)}, "
                        "expected path[,label][,split]")
    if table.empty:
        raise DataError(f"{csv_path}: lists no images")
    table = table.apply(lambda column: column.str.strip())
    empty = np.flatnonzero(table["path"] == "")
    if len(empty):
        raise DataError(f"{csv_path}, line {empty[0] + 2}: empty path")  # +1 header, +1 one-based
    base = csv_path.resolve().parent
    table["path"] = [str((base / p).resolve()) for p in table["path"]]
    return table


def _table(paths: Sequence[str], labels: Sequence[str] | str = "") -> pd.DataFrame:
    return pd.DataFrame({"path": list(paths), "label": labels, "split": ""})


def table_from_paths(paths: Sequence[str | Path], labels: Sequence | None = None) -> pd.DataFrame:
    """Image table of explicit paths (DataError naming the files that do not exist)."""
    if not paths:
        raise DataError("no query images given")
    paths = [str(Path(p).expanduser().resolve()) for p in paths]
    check_files(paths, "image paths")
    return _table(paths, list(labels) if labels is not None else "")


def table_from_folder(folder: str | Path, folder_labels: bool = False) -> pd.DataFrame:
    """Every image under ``folder`` (recursive, sorted, hidden files skipped).

    With ``folder_labels`` the label is the first sub-folder's name (``folder/<class>/.../img.jpg``);
    images directly in ``folder`` have none.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"--images: {root} is not a folder")
    root = root.resolve()
    paths = list_images(root)
    if not paths:
        raise DataError(f"--images: no images under {root} (extensions {' '.join(IMAGE_EXTENSIONS)})")
    parts = [p.relative_to(root).parts for p in paths]
    labels = [(rel[0] if len(rel) > 1 else "") if folder_labels else "" for rel in parts]
    return _table([str(p) for p in paths], labels)


def table_from_csv(csv_path: str | Path) -> pd.DataFrame:
    """Images a CSV lists: column ``path`` (relative to the CSV or absolute), optional ``label`` and ``split``.

    Labels are kept as text (any class name or id); an empty label means unknown.
    """
    table = read_image_csv(csv_path, "--csv")
    check_files(table["path"], str(csv_path))
    for column in ("label", "split"):
        if column not in table.columns:
            table[column] = ""
    return table[TABLE_COLUMNS + [c for c in table.columns if c not in TABLE_COLUMNS]]
