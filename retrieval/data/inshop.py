"""In-Shop Clothes Retrieval (Liu et al. 2016, DeepFashion): ``list_eval_partition.txt``.

First line: the image count; second: the header ``image_name item_id evaluation_status``;
then one image per line with status train, query or gallery. Item ids ``id_00000001``
become the integer 1. Paths are relative to the root (``img/...``).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import DataError
from .records import make_records, read_lines


def _item_id(text: str, where: str) -> int:
    try:
        return int(text.rsplit("_", 1)[-1])
    except ValueError:
        raise DataError(f"{where}: item id {text!r} is not of the form id_00000001") from None


def read_inshop(root: Path) -> pd.DataFrame:
    """Records of an In-Shop folder; ``official`` = train | query | gallery from the partition file."""
    listing = root / "list_eval_partition.txt"
    if not listing.is_file() and (root / "Eval" / "list_eval_partition.txt").is_file():
        listing = root / "Eval" / "list_eval_partition.txt"
    rows = read_lines(listing, 1)
    if len(rows) >= 2 and rows[0][0].isdigit() and rows[1][0] == "image_name":
        declared, rows = int(rows[0][0]), rows[2:]
        if declared != len(rows):
            raise DataError(f"{listing}: the first line declares {declared} images, the file lists {len(rows)}")
    paths, ids, split = [], [], []
    for number, row in enumerate(rows, 3):
        if len(row) < 3 or row[2] not in ("train", "query", "gallery"):
            raise DataError(f"{listing}, line {number}: expected 'image_name item_id train|query|gallery', "
                            f"got {' '.join(row)!r}")
        paths.append(str(root / row[0]))
        ids.append(_item_id(row[1], f"{listing}, line {number}"))
        split.append(row[2])
    return make_records(paths, ids, split)
