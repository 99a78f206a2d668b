"""Folder-per-class source: flat tree (split by class order) and train/ test/ sub-trees."""
from __future__ import annotations

from retrieval.config import DataConfig
from retrieval.data import load_records


def test_flat_tree_named_classes(tmp_path, make_image):
    for cls in ("ant", "bee", "cow", "dog"):
        for k in range(2):
            make_image(tmp_path / cls / f"{k}.jpg")
    (tmp_path / "ant" / "notes.txt").write_text("skip me")
    (tmp_path / ".hidden").mkdir()
    make_image(tmp_path / ".hidden" / "x.jpg")
    records = load_records(DataConfig(name="folder", root=str(tmp_path)))
    assert len(records) == 8
    parts = {s: sorted(p["class_name"].unique()) for s, p in records.groupby("split")}
    assert parts == {"train": ["ant", "bee"], "test": ["cow", "dog"]}


def test_split_subtrees_with_numeric_classes(tmp_path, make_image):
    for split, classes in (("train", ("3", "10")), ("test", ("20", "21"))):
        for cls in classes:
            for k in range(2):
                make_image(tmp_path / split / cls / f"{k}.png")
    records = load_records(DataConfig(name="folder", root=str(tmp_path)))
    assert {s: sorted(p["label"].unique()) for s, p in records.groupby("split")} == {
        "train": [3, 10], "test": [20, 21]}
    assert "class_name" not in records
