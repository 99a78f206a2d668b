"""Stanford Online Products reader: Ebay_train.txt / Ebay_test.txt."""
from __future__ import annotations

import logging

import pytest

from retrieval.config import DataConfig
from retrieval.data import load_records
from retrieval.errors import DataError


def test_files_give_the_split(sop_root, caplog):
    with caplog.at_level(logging.WARNING):
        records = load_records(DataConfig(name="sop", root=str(sop_root)))
    parts = {s: sorted(p["label"].unique()) for s, p in records.groupby("split")}
    assert parts == {"train": [1, 2], "test": [3, 4]} and len(records) == 8
    assert records["path"].str.endswith(".JPG").all()
    assert "published 59551 images of 11318 classes" in caplog.text


def test_class_ranges_resplit(sop_root):
    records = load_records(DataConfig(name="sop", root=str(sop_root), train_classes=[1, 3], test_classes=[4, 4]))
    assert {s: sorted(p["label"].unique()) for s, p in records.groupby("split")} == {"train": [1, 2, 3], "test": [4]}


def test_bad_line_is_named(sop_root):
    with open(sop_root / "Ebay_test.txt", "a") as fh:
        fh.write("99 x 1 bicycle_final/x.JPG\n")
    with pytest.raises(DataError, match=r"Ebay_test.txt, line 6: class_id 'x'"):
        load_records(DataConfig(name="sop", root=str(sop_root)))
