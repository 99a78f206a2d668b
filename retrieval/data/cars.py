"""Cars196 (Krause et al. 2013): ``cars_annos.mat`` and ``car_ims/``.

``annotations`` is a struct array with ``relative_im_path``, ``bbox_x1..bbox_y2``, ``class``
(1–196) and ``test`` (0/1, the classification split). Metric-learning split: classes 1–98
train, 99–196 test. Boxes are 1-based inclusive pixel coordinates (MATLAB); they are stored
here in the PIL convention (0-based, end exclusive): (x1 - 1, y1 - 1, x2, y2).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.io

from ..errors import DataError
from .records import make_records

FIELDS = ("relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test")


def _annotations(path: Path) -> list[dict]:
    """The annotation structs as plain dicts (simplify_cells avoids NumPy-2 object-array indexing)."""
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    try:
        mat = scipy.io.loadmat(str(path), simplify_cells=True)
    except NotImplementedError as err:  # MATLAB v7.3 files are HDF5; the published file is v5
        raise DataError(f"{path}: MATLAB v7.3 (HDF5) files are not supported ({err}); use the original "
                        "cars_annos.mat") from None
    except (scipy.io.matlab.MatReadError, ValueError, OSError, TypeError) as err:
        raise DataError(f"{path}: not a readable MATLAB file ({err})") from None
    annotations = mat.get("annotations")
    if annotations is None:
        raise DataError(f"{path}: no 'annotations' variable; found {[k for k in mat if not k.startswith('__')]}")
    if isinstance(annotations, dict):  # a single annotation collapses to one struct
        annotations = [annotations]
    annotations = list(np.atleast_1d(annotations))
    if annotations and not set(FIELDS) <= set(annotations[0]):
        raise DataError(f"{path}: annotations lack field(s) {sorted(set(FIELDS) - set(annotations[0]))}")
    return annotations


def read_cars(root: Path) -> pd.DataFrame:
    """Records of a Cars196 folder holding cars_annos.mat (paths in it are relative to the folder)."""
    annotations = _annotations(root / "cars_annos.mat")
    paths, ids, boxes, split = [], [], [], []
    for a in annotations:
        paths.append(str(root / str(a["relative_im_path"])))
        ids.append(int(a["class"]))
        boxes.append((float(a["bbox_x1"]) - 1, float(a["bbox_y1"]) - 1, float(a["bbox_x2"]), float(a["bbox_y2"])))
        split.append("test" if int(a["test"]) else "train")
    return make_records(paths, ids, split, boxes)
