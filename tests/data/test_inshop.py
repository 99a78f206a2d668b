"""In-Shop reader: list_eval_partition.txt, query/gallery protocol with one shared label mapping."""
from __future__ import annotations

import numpy as np
import pytest

from retrieval.config import DataConfig
from retrieval.data import build_splits, load_records
from retrieval.errors import DataError


def test_partition_and_item_ids(inshop_root):
    records = load_records(DataConfig(name="inshop", root=str(inshop_root)))
    counts = records.groupby("split")["label"].agg(["size", "nunique"]).to_dict("index")
    assert counts == {"train": {"size": 4, "nunique": 2}, "query": {"size": 3, "nunique": 3},
                      "gallery": {"size": 6, "nunique": 3}}
    assert sorted(records["label"].unique()) == [1, 2, 3, 4, 5]


def test_query_gallery_share_labels(inshop_root):
    splits = build_splits(DataConfig(name="inshop", root=str(inshop_root)))
    assert set(splits) == {"train", "query", "gallery"}
    query, gallery = splits["query"], splits["gallery"]
    np.testing.assert_array_equal(query.class_ids, gallery.class_ids)
    for i, item in enumerate(query.records["label"]):
        same = gallery.labels[gallery.records["label"].to_numpy() == item]
        assert len(same) == 2 and (same == query.labels[i]).all()


def test_ranges_filter_inside_the_protocol(inshop_root):
    records = load_records(DataConfig(name="inshop", root=str(inshop_root), train_classes=[1, 1],
                                      test_classes=[3, 4]))
    assert {s: sorted(p["label"].unique()) for s, p in records.groupby("split")} == {
        "train": [1], "query": [3, 4], "gallery": [3, 4]}


def test_declared_count_must_match(inshop_root):
    listing = inshop_root / "list_eval_partition.txt"
    listing.write_text("99\n" + listing.read_text().split("\n", 1)[1])
    with pytest.raises(DataError, match="declares 99 images, the file lists 13"):
        load_records(DataConfig(name="inshop", root=str(inshop_root)))
