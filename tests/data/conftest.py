"""Tiny fixture trees in the real benchmark formats, written with real decodable images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image


def write_image(path: Path, size: tuple[int, int] = (12, 10), colour=(200, 30, 30), fmt: str | None = None) -> Path:
    """A small solid image (size = (width, height)); the format follows the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt)
    return path


def two_tone(path: Path, size=(20, 10), left=(255, 0, 0), right=(0, 0, 255)) -> Path:
    """Left half one colour, right half another: shows crops and rotations."""
    w, h = size
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:, : w // 2] = left
    arr[:, w // 2:] = right
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def cub_root(tmp_path: Path) -> Path:
    """CUB format: classes 1, 2 (train half) and 101, 102 (test half), 3 images each.

    Image 20×10, left half red; its box (x y w h) = 0 0 10 10 covers the red half.
    Image-level split: the first image of each class is a test image (flag 0).
    """
    root = tmp_path / "CUB_200_2011"
    images, labels, boxes, split, classes = [], [], [], [], []
    image_id = 0
    for cls in (1, 2, 101, 102):
        folder = f"{cls:03d}.Bird_{cls}"
        classes.append(f"{cls} {folder}")
        for k in range(3):
            image_id += 1
            rel = f"{folder}/Bird_{cls}_{k}.jpg"
            two_tone(root / "images" / rel)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {cls}")
            boxes.append(f"{image_id} 0.0 0.0 10.0 10.0")
            split.append(f"{image_id} {0 if k == 0 else 1}")
    for name, lines in (("images.txt", images), ("image_class_labels.txt", labels), ("bounding_boxes.txt", boxes),
                        ("train_test_split.txt", split), ("classes.txt", classes)):
        (root / name).write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def cars_root(tmp_path: Path) -> Path:
    """Cars196 format: classes 1, 2, 99, 100 × 2 images; box (MATLAB 1-based) 1 1 10 10; test flag on the 2nd."""
    root = tmp_path / "cars"
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    rows = []
    for cls in (1, 2, 99, 100):
        for k in range(2):
            rel = f"car_ims/{cls:03d}{k}.jpg"
            two_tone(root / rel)
            rows.append((rel, 1, 1, 10, 10, cls, k))
    annotations = np.zeros((1, len(rows)), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        for f, v in zip(fields, row):
            annotations[0, i][f] = np.array([[v]], dtype=np.uint16) if not isinstance(v, str) else np.array([v])
    scipy.io.savemat(root / "cars_annos.mat", {"annotations": annotations,
                                               "class_names": np.array(["a", "b"], dtype=object)})
    return root


@pytest.fixture
def sop_root(tmp_path: Path) -> Path:
    """SOP format: train classes 1, 2 and test classes 3, 4, 2 images each."""
    root = tmp_path / "Stanford_Online_Products"
    image_id = 0
    for name, classes in (("Ebay_train.txt", (1, 2)), ("Ebay_test.txt", (3, 4))):
        lines = ["image_id class_id super_class_id path"]
        for cls in classes:
            for k in range(2):
                image_id += 1
                rel = f"bicycle_final/{cls}_{k}.JPG"
                write_image(root / rel, fmt="JPEG")
                lines.append(f"{image_id} {cls} 1 {rel}")
        (root / name).write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def inshop_root(tmp_path: Path) -> Path:
    """In-Shop format: train items 1, 2 (2 images each); test items 3, 4, 5: 1 query + 2 gallery each."""
    root = tmp_path / "inshop"
    rows = []
    for item, status in [(1, ["train"] * 2), (2, ["train"] * 2)] + [(i, ["query", "gallery", "gallery"])
                                                                     for i in (3, 4, 5)]:
        for k, s in enumerate(status):
            rel = f"img/WOMEN/Dresses/id_{item:08d}/{k:02d}_1_front.jpg"
            write_image(root / rel)
            rows.append(f"{rel} id_{item:08d} {s}")
    (root / "list_eval_partition.txt").write_text(
        f"{len(rows)}\nimage_name item_id evaluation_status\n" + "\n".join(rows) + "\n")
    return root


@pytest.fixture
def make_image():
    """``make_image(path, size=(w, h), colour=(r, g, b), fmt=None)`` writes a small solid image."""
    return write_image


@pytest.fixture
def make_two_tone():
    """``make_two_tone(path, size=(w, h), left=, right=)`` writes a two-colour image."""
    return two_tone
