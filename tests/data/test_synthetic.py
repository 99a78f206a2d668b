"""Synthetic demo data: determinism, idempotence, pairs sharing colours, CSV format, disjoint classes."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from retrieval.data.synthetic import class_parts, generate, render, render_with_mask
from retrieval.errors import DataError

SMALL = dict(num_classes=6, per_class=3, size=32)


def test_same_seed_same_bytes(tmp_path):
    a = generate(tmp_path / "a", **SMALL, workers=1)
    b = generate(tmp_path / "b", **SMALL, workers=2)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 6 * 3 * 2 + 2  # images, masks, labels.csv, manifest.json
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    np.testing.assert_array_equal(render(0, 3, 1, 32), render(0, 3, 1, 32))
    assert not np.array_equal(render(0, 3, 1, 32), render(1, 3, 1, 32))
    assert not np.array_equal(render(0, 3, 1, 32), render(0, 3, 2, 32))


def test_csv_and_manifest(tmp_path):
    root = generate(tmp_path / "s", **SMALL)
    table = pd.read_csv(root / "labels.csv")
    assert list(table.columns) == ["path", "label", "split", "mask"] and len(table) == 18
    assert all((root / m).is_file() for m in table["mask"])
    assert set(table.loc[table.split == "train", "label"]) == {0, 1, 2}
    assert set(table.loc[table.split == "test", "label"]) == {3, 4, 5}
    assert json.loads((root / "manifest.json").read_text())["num_classes"] == 6


def test_second_call_is_a_no_op_and_other_parameters_an_error(tmp_path):
    root = generate(tmp_path / "s", **SMALL)
    stamp = (root / "labels.csv").stat().st_mtime_ns
    assert generate(tmp_path / "s", **SMALL) == root
    assert (root / "labels.csv").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="other parameters"):
        generate(tmp_path / "s", num_classes=8, per_class=3, size=32)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.txt").write_text("mine")
    with pytest.raises(DataError, match="not a synthetic data set"):
        generate(tmp_path / "foreign", **SMALL)


def test_class_pairs_share_colours_not_shapes():
    for k in range(20):
        a, b = class_parts(0, 2 * k), class_parts(0, 2 * k + 1)
        assert sorted(p.colour for p in a) == sorted(p.colour for p in b)
        assert [(p.shape, p.texture) for p in a] != [(p.shape, p.texture) for p in b] or \
            [round(p.dx, 3) for p in a] != [round(p.dx, 3) for p in b]


def test_same_class_is_closer_than_its_colour_twin():
    """Pixel level: two samples of a class have closer mean images than the class and its colour twin.

    Single images are too noisy to compare (pose, clutter, lighting); the mean of 12 instances
    keeps what a class always draws. Classes 2k and 2k+1 share their colours, so only shapes,
    textures and layout can separate them.
    """
    def mean_image(label, instances):
        return np.mean([render(0, label, i, 32).astype(float) for i in instances], axis=0)

    spread = [np.abs(render(0, 0, i, 32).astype(float) - render(0, 0, i + 1, 32)).mean() for i in range(4)]
    assert min(spread) > 5  # instances differ (pose, clutter, lighting)
    for k in range(6):
        first, second = mean_image(2 * k, range(12)), mean_image(2 * k, range(12, 24))
        twin = mean_image(2 * k + 1, range(12))
        within, between = np.abs(first - second).mean(), np.abs(first - twin).mean()
        assert within < between, f"classes {2 * k}/{2 * k + 1}: within {within:.2f} >= between {between:.2f}"


def test_mask_is_where_the_object_is_visible():
    """Independent check: the mask against the same drawing without the object (every random draw equal).

    The two images differ exactly where the object shows (occluders in front hide it in both);
    only anti-aliased edges, under half covered, differ outside the mask.
    """
    for label, instance in [(0, 0), (3, 1), (7, 2), (10, 5)]:
        image, mask = render_with_mask(0, label, instance, 64)
        np.testing.assert_array_equal(image, render(0, label, instance, 64))  # the image is unchanged
        background, empty = render_with_mask(0, label, instance, 64, draw_object=False)
        assert not empty.any()
        differs = np.abs(image.astype(int) - background.astype(int)).sum(axis=2) > 0
        assert mask.mean() > 0.03 and (differs & mask).sum() >= 0.97 * mask.sum()
        near = np.zeros_like(mask)  # the mask grown by one pixel: its anti-aliased edge
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                near |= np.roll(np.roll(mask, dy, axis=0), dx, axis=1)
        assert not (differs & ~near).any()


def test_occluders_remove_mask_pixels():
    """Some instance has an occluder over the object: its mask is smaller than the object drawn alone."""
    from retrieval.data import synthetic

    found = 0
    for instance in range(12):
        _, mask = render_with_mask(0, 2, instance, 64)
        real = synthetic._clutter
        try:  # draw the same instance with the occluders left out of the mask
            synthetic._clutter = lambda *a, cover=None, **k: real(*a, **k)
            _, unoccluded = render_with_mask(0, 2, instance, 64)
        finally:
            synthetic._clutter = real
        assert not (mask & ~unoccluded).any()  # occluders only ever remove object pixels
        found += int((unoccluded & ~mask).any())
    assert found > 0


def test_masks_are_read_into_the_records(tmp_path):
    from retrieval.data.csv_source import read_csv

    root = generate(tmp_path / "s", **SMALL)
    records = read_csv(root / "labels.csv")
    assert all(m.startswith(str(root.resolve())) and m.endswith(".png") for m in records["mask"])


def test_a_version_1_folder_is_still_read(tmp_path, caplog):
    """Folders generated before masks existed keep working (without masks) and say how to get them."""
    root = generate(tmp_path / "s", **SMALL)
    manifest = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps({**manifest, "version": 1}))
    with caplog.at_level("WARNING"):
        assert generate(tmp_path / "s", **SMALL) == root
    assert "without object masks" in caplog.text
    (root / "manifest.json").write_text(json.dumps({**manifest, "version": 1, "size": 40}))
    with pytest.raises(DataError, match="other parameters"):
        generate(tmp_path / "s", **SMALL)
