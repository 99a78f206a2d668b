"""Image transforms by config; the default is the CGD recipe (Jun et al. 2019, §4.1).

Train: resize to ``resize``×``resize`` → random crop ``image_size`` → horizontal flip
(``data.train_crop: random``), or RandomResizedCrop over ``data.crop_scale`` of the resized image
→ horizontal flip (``resized``: Musgrave et al. 2020's augmentation for these benchmarks).
Test: resize to ``image_size``×``image_size``. Both resizes are square, as CGD's code does
(leftthomas/CGD ``utils.py``), so train and test see the same aspect distortion.
"""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np
from PIL import Image
from torchvision import transforms as T

from ..schema import DataConfig
from .images import eval_array

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transforms(cfg: DataConfig, train: bool) -> T.Compose:
    """PIL RGB image → float32 tensor (3, image_size, image_size) normalised with ImageNet mean/std."""
    if train:
        crop = (T.RandomResizedCrop(cfg.image_size, scale=tuple(cfg.crop_scale)) if cfg.train_crop == "resized"
                else T.RandomCrop(cfg.image_size))
        steps = [T.Resize((cfg.resize, cfg.resize)), crop, T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize((cfg.image_size, cfg.image_size))]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def build_eval_array(cfg: DataConfig) -> Callable[[Image.Image], np.ndarray]:
    """``build_transforms(cfg, train=False)`` without PyTorch operators: PIL RGB image → (3, S, S)
    float32 numpy (``images.eval_array``; equal within float32 rounding, tests/serve/test_api.py)."""
    return functools.partial(eval_array, size=cfg.image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
