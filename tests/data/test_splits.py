"""Validation classes are carved from the training classes only; test classes are never touched."""
import pandas as pd
import pytest

from retrieval.data.splits import carve_validation
from retrieval.errors import DataError


def frame(train=10, test=5, per_class=3):
    rows = [(f"{c}_{i}.jpg", c, "train" if c <= train else "test") for c in range(1, train + test + 1)
            for i in range(per_class)]
    return pd.DataFrame(rows, columns=["path", "label", "split"])


def test_val_classes_come_from_train_and_are_whole_classes():
    before = frame()
    after = carve_validation(before, 3)
    val = after.loc[after["split"] == "val", "label"]
    assert sorted(val.unique()) == [1, 5, 10]  # evenly spaced over the sorted train ids (first, middle, last)
    assert (after.groupby("label")["split"].nunique() == 1).all()  # no class split across two splits
    assert after.loc[after["split"] == "test"].equals(before.loc[before["split"] == "test"])
    assert before["split"].value_counts()["train"] == 30  # the input is not modified
    assert carve_validation(before, 0) is before


def test_too_many_val_classes_is_an_error_naming_the_key():
    with pytest.raises(DataError, match="data.val_classes: 9 validation classes leave fewer than 2"):
        carve_validation(frame(), 9)
