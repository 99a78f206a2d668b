"""CUB-200-2011 (Wah et al. 2011): ``images.txt``, ``image_class_labels.txt``, ``bounding_boxes.txt``,
``train_test_split.txt``, ``classes.txt``, ``images/``.

Class ids 1–200; metric-learning split: 1–100 train, 101–200 test (Oh Song et al. 2016).
Boxes are ``x y width height`` in pixels, 0-based.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from .records import make_records, read_lines


def _by_id(path: Path, min_fields: int) -> dict[str, list[str]]:
    return {row[0]: row[1:] for row in read_lines(path, min_fields)}


def read_cub(root: Path) -> pd.DataFrame:
    """Records of a CUB_200_2011 folder (``root`` holds images.txt; ``root/CUB_200_2011`` works too)."""
    if not (root / "images.txt").is_file() and (root / "CUB_200_2011" / "images.txt").is_file():
        root = root / "CUB_200_2011"
    images = read_lines(root / "images.txt", 2)
    labels = _by_id(root / "image_class_labels.txt", 2)
    boxes = _by_id(root / "bounding_boxes.txt", 5) if (root / "bounding_boxes.txt").is_file() else {}
    split_file = root / "train_test_split.txt"
    official = _by_id(split_file, 2) if split_file.is_file() else {}
    paths, ids, box, split = [], [], [], []
    for image_id, rel in ((row[0], row[1]) for row in images):
        if image_id not in labels:
            raise DataError(f"{root / 'image_class_labels.txt'}: no class for image id {image_id} ({rel})")
        paths.append(str(root / "images" / rel))
        ids.append(int(labels[image_id][0]))
        x, y, w, h = (float(v) for v in boxes[image_id][:4]) if image_id in boxes else (np.nan,) * 4
        box.append((x, y, x + w, y + h))
        flag = official.get(image_id, [None])[0]
        split.append(None if flag is None else ("train" if flag == "1" else "test"))
    return make_records(paths, ids, split if all(s is not None for s in split) else None, box)
