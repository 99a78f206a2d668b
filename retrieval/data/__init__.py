"""Data: benchmark and user sources → records → datasets, transforms, m-per-class loaders, synthetic data."""
from .dataset import ImageDataset, build_splits, crop_box
from .images import load_image, verify_images
from .loaders import build_eval_loader, build_train_loader
from .records import load_records
from .samplers import MPerClassBatchSampler
from .synthetic import generate as generate_synthetic
from .transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms

__all__ = [
    "ImageDataset", "build_splits", "crop_box", "load_image", "verify_images", "build_eval_loader",
    "build_train_loader", "load_records", "MPerClassBatchSampler", "generate_synthetic",
    "IMAGENET_MEAN", "IMAGENET_STD", "build_transforms",
]
