"""Cars196 reader: cars_annos.mat via scipy, class split, test-flag split, 1-based boxes."""
from __future__ import annotations

import numpy as np
import pytest

from retrieval.config import DataConfig
from retrieval.data import build_splits, load_records
from retrieval.errors import DataError


def _summary(records):
    return {s: (len(p), sorted(p["label"].unique())) for s, p in records.groupby("split")}


def test_class_split_and_official_split(cars_root):
    assert _summary(load_records(DataConfig(name="cars", root=str(cars_root)))) == {
        "train": (4, [1, 2]), "test": (4, [99, 100])}
    official = load_records(DataConfig(name="cars", root=str(cars_root), split="official"))
    assert _summary(official) == {"train": (4, [1, 2, 99, 100]), "test": (4, [1, 2, 99, 100])}


def test_matlab_boxes_become_zero_based_and_crop(cars_root):
    records = load_records(DataConfig(name="cars", root=str(cars_root)))
    assert (records[["x1", "y1", "x2", "y2"]].to_numpy() == [0, 0, 10, 10]).all()
    cropped = build_splits(DataConfig(name="cars", root=str(cars_root), crop=True))["test"].image(0)
    assert cropped.size == (10, 10) and np.asarray(cropped)[..., 2].mean() < 50  # the blue half is gone


def test_not_a_mat_file(cars_root):
    (cars_root / "cars_annos.mat").write_text("garbage")
    with pytest.raises(DataError, match="cars_annos.mat"):
        load_records(DataConfig(name="cars", root=str(cars_root)))
