"""Train loader (m-per-class, replayable, worker errors name the file) and ordered eval loader."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from retrieval.config import DataConfig
from retrieval.data import ImageDataset, build_eval_loader, build_train_loader, build_transforms
from retrieval.errors import ImageError


@pytest.fixture
def dataset(tmp_path, make_image):
    paths, labels = [], []
    for cls in range(6):
        for k in range(3):
            paths.append(str(make_image(tmp_path / f"{cls}_{k}.png", size=(10, 8), colour=(40 * cls, 10 * k, 0))))
            labels.append(10 + cls)
    records = pd.DataFrame({"path": paths, "label": labels, "split": "train",
                            "x1": np.nan, "y1": np.nan, "x2": np.nan, "y2": np.nan})
    return ImageDataset(records, build_transforms(DataConfig(image_size=8, resize=10), train=True))


def _labels(loader, epoch):
    loader.batch_sampler.set_epoch(epoch)
    return [y.tolist() for _, y in loader]


def test_train_loader_batches_and_replay(dataset):
    cfg = DataConfig(batch_size=4, m_per_class=2, num_workers=0, image_size=8, resize=10)
    loader = build_train_loader(dataset, cfg, seed=7)
    images, labels = next(iter(loader))
    assert images.shape == (4, 3, 8, 8) and images.dtype == torch.float32
    assert sorted(np.bincount(labels.numpy()).tolist())[-2:] == [2, 2]
    again = build_train_loader(dataset, cfg, seed=7)
    assert _labels(loader, 2) == _labels(again, 2)


def test_worker_error_names_the_file(dataset):
    bad = dataset.paths[4]
    open(bad, "wb").close()
    cfg = DataConfig(batch_size=18, m_per_class=3, num_workers=1, image_size=8, resize=10)
    loader = build_train_loader(dataset, cfg, seed=0)
    assert loader.num_workers == 1  # the error crosses the worker boundary
    with pytest.raises(ImageError, match=bad):
        next(iter(loader))


def test_eval_loader_keeps_order(dataset):
    loader = build_eval_loader(dataset, batch_size=5, num_workers=0)
    labels = torch.cat([y for _, y in loader]).numpy()
    np.testing.assert_array_equal(labels, dataset.labels)
