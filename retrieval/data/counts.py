"""Published image and class counts of the benchmarks, and the check of a loaded split against them."""
from __future__ import annotations

import logging

import pandas as pd

log = logging.getLogger(__name__)

# (images, classes) per split, as published (DESIGN.md "Datasets and splits").
# "classes": the metric-learning split (disjoint classes, Oh Song et al. 2016);
# "official": the image-level split shipped with the data set (CUB train_test_split.txt,
# the Cars196 `test` flag), which shares classes between train and test.
PUBLISHED: dict[str, dict[str, dict[str, tuple[int, int]]]] = {
    "cub": {
        "classes": {"train": (5864, 100), "test": (5924, 100)},
        "official": {"train": (5994, 200), "test": (5794, 200)},
    },
    "cars": {
        "classes": {"train": (8054, 98), "test": (8131, 98)},
        "official": {"train": (8144, 196), "test": (8041, 196)},
    },
    "sop": {
        "classes": {"train": (59551, 11318), "test": (60502, 11316)},
    },
    "inshop": {
        "classes": {"train": (25882, 3997), "query": (14218, 3985), "gallery": (12612, 3985)},
    },
}


def check_counts(records: pd.DataFrame, name: str, protocol: str) -> list[str]:
    """Compare images and classes per split with the published figures; log and return the differences."""
    expected = PUBLISHED.get(name, {}).get(protocol)
    if expected is None:
        return []
    differences = []
    for split, (images, classes) in expected.items():
        part = records[records["split"] == split]
        found = (len(part), int(part["label"].nunique()))
        if found != (images, classes):
            differences.append(
                f"{name} {split}: found {found[0]} images of {found[1]} classes, "
                f"published {images} images of {classes} classes")
    for text in differences:
        log.warning("%s (a subset is fine; a full copy should match)", text)
    return differences
