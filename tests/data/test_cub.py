"""CUB-200-2011 reader: metric-learning split, official split, class ranges, boxes, count check."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest

from retrieval.config import DataConfig
from retrieval.data import build_splits, load_records
from retrieval.errors import DataError

CUB_MINI = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "CUB_mini"


def _summary(records):
    return {s: (len(p), sorted(p["label"].unique())) for s, p in records.groupby("split")}


def test_metric_learning_split(cub_root, caplog):
    with caplog.at_level(logging.WARNING):
        records = load_records(DataConfig(name="cub", root=str(cub_root)))
    assert _summary(records) == {"train": (6, [1, 2]), "test": (6, [101, 102])}
    assert "found 6 images of 2 classes, published 5864 images of 100 classes" in caplog.text
    assert records["path"].map(lambda p: Path(p).is_absolute() and Path(p).is_file()).all()


def test_official_split_and_ranges(cub_root):
    official = load_records(DataConfig(name="cub", root=str(cub_root), split="official"))
    assert _summary(official) == {"train": (8, [1, 2, 101, 102]), "test": (4, [1, 2, 101, 102])}
    ranged = load_records(DataConfig(name="cub", root=str(cub_root), train_classes=[1, 1], test_classes=[2, 101]))
    assert _summary(ranged) == {"train": (3, [1]), "test": (6, [2, 101])}
    with pytest.raises(DataError, match="overlap"):
        load_records(DataConfig(name="cub", root=str(cub_root), train_classes=[1, 2], test_classes=[2, 3]))


def test_boxes_are_xyxy_and_crop(cub_root):
    records = load_records(DataConfig(name="cub", root=str(cub_root)))
    assert (records[["x1", "y1", "x2", "y2"]].to_numpy() == [0, 0, 10, 10]).all()
    cfg = DataConfig(name="cub", root=str(cub_root), crop=True)
    cropped = build_splits(cfg)["train"].image(0)
    assert cropped.size == (10, 10)
    assert np.asarray(cropped)[..., 0].mean() > 200  # only the red half is left
    whole = build_splits(DataConfig(name="cub", root=str(cub_root)))["train"].image(0)
    assert whole.size == (20, 10)


def test_missing_file_and_empty_split(cub_root):
    first = next((cub_root / "images").rglob("*.jpg"))
    first.unlink()
    with pytest.raises(DataError, match="1 of 12 image files are missing, e.g. " + re.escape(str(first))):
        load_records(DataConfig(name="cub", root=str(cub_root)))
    with pytest.raises(DataError, match="test split has no images"):
        load_records(DataConfig(name="cub", root=str(cub_root), train_classes=[1, 200]))


def test_missing_annotation_file_is_named(cub_root):
    (cub_root / "image_class_labels.txt").unlink()
    with pytest.raises(DataError, match="image_class_labels.txt"):
        load_records(DataConfig(name="cub", root=str(cub_root)))


@pytest.mark.skipif(not CUB_MINI.is_dir(), reason="../shared/data/CUB_mini is absent")
def test_cub_mini_real_photographs():
    cfg = DataConfig(name="cub", root=str(CUB_MINI), train_classes=[1, 50], test_classes=[51, 100],
                     image_size=64, resize=72)
    splits = build_splits(cfg)
    train, test = splits["train"], splits["test"]
    assert len(train) + len(test) == 3428 and train.num_classes + test.num_classes == 58
    assert train.class_ids.max() <= 50 < test.class_ids.min()
    image, label = train[0]
    assert image.shape == (3, 64, 64) and 0 <= label < train.num_classes
