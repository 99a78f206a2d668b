"""Stanford Online Products (Oh Song et al. 2016): ``Ebay_train.txt`` / ``Ebay_test.txt``.

Each file: a header ``image_id class_id super_class_id path``, then one image per line, the
path relative to the root. Train: classes 1–11,318; test: 11,319–22,634.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import DataError
from .records import make_records, read_lines


def read_sop(root: Path) -> pd.DataFrame:
    """Records of a Stanford_Online_Products folder; ``official`` = the file each image is listed in."""
    paths, ids, split = [], [], []
    for name, part in (("Ebay_train.txt", "train"), ("Ebay_test.txt", "test")):
        rows = read_lines(root / name, 4)
        if rows and rows[0][0] == "image_id":
            rows = rows[1:]
        for number, row in enumerate(rows, 2):
            try:
                ids.append(int(row[1]))
            except ValueError:
                raise DataError(f"{root / name}, line {number}: class_id {row[1]!r} is not an integer") from None
            paths.append(str(root / row[3]))
            split.append(part)
    return make_records(paths, ids, split)
