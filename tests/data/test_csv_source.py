"""CSV source: path,label[,split] relative to the CSV; text labels; validation."""
from __future__ import annotations

import pytest

from retrieval.config import DataConfig
from retrieval.data import build_splits, load_records
from retrieval.errors import DataError


@pytest.fixture
def csv_file(tmp_path, make_image):
    lines = ["path,label,split"]
    for cls, split in (("cat", "train"), ("dog", "train"), ("eel", "test"), ("fox", "test")):
        for k in range(2):
            make_image(tmp_path / "imgs" / f"{cls}{k}.png")
            lines.append(f"imgs/{cls}{k}.png,{cls},{split}")
    path = tmp_path / "list.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_relative_paths_text_labels_and_split(csv_file):
    records = load_records(DataConfig(name="csv", root=str(csv_file)))
    assert records["path"].iloc[0] == str(csv_file.parent / "imgs" / "cat0.png")
    assert dict(zip(records["class_name"], records["label"])) == {"cat": 0, "dog": 1, "eel": 2, "fox": 3}
    assert sorted(records.loc[records["split"] == "test", "class_name"].unique()) == ["eel", "fox"]
    splits = build_splits(DataConfig(name="csv", root=str(csv_file)))
    assert splits["test"].num_classes == 2 and list(splits["test"].labels) == [0, 0, 1, 1]


def test_without_split_column_halves_by_class(tmp_path, make_image):
    rows = ["path,label"] + [f"{make_image(tmp_path / f'{c}_{k}.jpg').name},{c}" for c in (5, 7, 9) for k in range(2)]
    (tmp_path / "l.csv").write_text("\n".join(rows))
    records = load_records(DataConfig(name="csv", root=str(tmp_path / "l.csv")))
    assert {s: sorted(p["label"].unique()) for s, p in records.groupby("split")} == {"train": [5, 7], "test": [9]}
    with pytest.raises(DataError, match="has no split of its own"):
        load_records(DataConfig(name="csv", root=str(tmp_path / "l.csv"), split="official"))


@pytest.mark.parametrize("text, message", [
    ("file,label\na.png,1\n", r"missing column\(s\) \['path'\]"),
    ("path,label,split\na.png,1,validation\n", "line 2: split 'validation' is not one of"),
    ("path,label\na.png,\n", "line 2: empty label"),
])
def test_bad_csv_is_named(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        load_records(DataConfig(name="csv", root=str(path)))


def test_csv_not_found(tmp_path):
    with pytest.raises(DataError, match="nope.csv does not exist"):
        load_records(DataConfig(name="csv", root=str(tmp_path / "nope.csv")))
