"""``ImageDataset`` (records → (image tensor, contiguous label)) and ``build_splits``."""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .images import load_image
from .splits import load_records
from .transforms import build_transforms
from ..progress import progress
from ..schema import DataConfig

log = logging.getLogger(__name__)


def crop_box(image: Image.Image, box: Sequence[float]) -> Image.Image:
    """Crop to (x1, y1, x2, y2), clamped to the image; the whole image when the box is NaN or empty."""
    if any(np.isnan(v) for v in box):
        return image
    w, h = image.size
    x1, y1 = max(0, int(round(box[0]))), max(0, int(round(box[1])))
    x2, y2 = min(w, int(round(box[2]))), min(h, int(round(box[3])))
    if x2 - x1 < 2 or y2 - y1 < 2:
        return image
    return image.crop((x1, y1, x2, y2))


class ImageDataset(torch.utils.data.Dataset):
    """Images of a records table; ``dataset[i]`` = (float32 tensor (3, H, W), label int in 0..C-1).

    ``class_ids``: the data set's own class ids in label order; pass the same list to the
    query and gallery sets of a protocol so equal ids get equal labels. Default: the sorted
    ids present.
    """

    def __init__(self, records: pd.DataFrame, transform: Callable | None = None,
                 class_ids: Sequence[int] | None = None, crop: bool = False) -> None:
        self.records = records.reset_index(drop=True)
        self.transform = transform
        self.crop = crop
        ids = np.sort(self.records["label"].unique()) if class_ids is None else np.asarray(class_ids)
        self.class_ids = ids.astype(np.int64)
        lookup = {int(c): i for i, c in enumerate(self.class_ids)}
        self.labels = np.array([lookup[int(c)] for c in self.records["label"]], dtype=np.int64)
        self.paths: list[str] = self.records["path"].tolist()
        self._boxes = self.records[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64)
        self._cache: list[np.ndarray] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, index: int) -> Image.Image:
        """The decoded RGB image (cropped when ``crop``; from the cache when filled)."""
        if self._cache is not None:
            return Image.fromarray(self._cache[index])
        image = load_image(self.paths[index])
        return crop_box(image, self._boxes[index]) if self.crop else image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.image(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def fill_cache(self, size: int, num_workers: int = 4) -> None:
        """Decode every image once, resized to ``size``×``size``, and keep it in memory (uint8).

        Workers forked later share these arrays copy-on-write.
        """
        def decode(i: int) -> np.ndarray:
            return np.asarray(self.image(i).resize((size, size), Image.BILINEAR))

        with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
            cache = list(progress(pool.map(decode, range(len(self))), total=len(self), desc="cache images",
                              unit="img"))
        self._cache = cache
        log.info("cached %d images at %d px (%.0f MB)", len(cache), size,
                 sum(a.nbytes for a in cache) / 2**20)


class PathsDataset(torch.utils.data.Dataset):
    """Images at arbitrary paths; ``dataset[i]`` = (transform(image), label int, -1 when unknown)."""

    def __init__(self, paths: Sequence[str], transform, labels: Sequence[int] | None = None) -> None:
        self.paths = [str(p) for p in paths]
        self.transform = transform
        self.labels = np.full(len(self.paths), -1, np.int64) if labels is None else np.asarray(labels, np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = load_image(self.paths[index])
        return (self.transform(image) if self.transform is not None else image), int(self.labels[index])


def build_splits(cfg: DataConfig) -> dict[str, ImageDataset]:
    """Datasets of the configured source: 'train' and 'test', or 'train', 'query', 'gallery'; plus 'val'
    when ``data.val_classes`` holds training classes out.

    'train' uses the train transform, the others the test transform; query and gallery share
    one label mapping.
    """
    records = load_records(cfg)
    parts = {name: records[records["split"] == name] for name in ("train", "val", "test", "query", "gallery")}
    train_tf, test_tf = build_transforms(cfg, train=True), build_transforms(cfg, train=False)
    out = {"train": ImageDataset(parts["train"], train_tf, crop=cfg.crop)}
    if len(parts["val"]):
        out["val"] = ImageDataset(parts["val"], test_tf, crop=cfg.crop)
    if len(parts["query"]) or len(parts["gallery"]):
        shared = np.sort(pd.concat([parts["query"], parts["gallery"]])["label"].unique())
        out["query"] = ImageDataset(parts["query"], test_tf, class_ids=shared, crop=cfg.crop)
        out["gallery"] = ImageDataset(parts["gallery"], test_tf, class_ids=shared, crop=cfg.crop)
    else:
        out["test"] = ImageDataset(parts["test"], test_tf, crop=cfg.crop)
    if cfg.cache:
        for name, dataset in out.items():
            dataset.fill_cache(cfg.resize if name == "train" else cfg.image_size, cfg.num_workers or 1)
    return out
