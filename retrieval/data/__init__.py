"""Data: benchmark and user sources → records → datasets, transforms, m-per-class loaders, synthetic data."""
from .dataset import ImageDataset, PathsDataset, build_splits, crop_box
from .images import decode_image, list_images, load_image, verify_images
from .loaders import build_eval_loader, build_train_loader
from .splits import load_records
from .samplers import MPerClassBatchSampler
from .synthetic import generate as generate_synthetic
from .tables import table_from_csv, table_from_folder, table_from_paths
from .transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms

__all__ = [
    "ImageDataset", "PathsDataset", "build_splits", "crop_box", "decode_image", "list_images", "load_image", "verify_images",
    "build_eval_loader", "build_train_loader", "load_records", "MPerClassBatchSampler", "generate_synthetic",
    "IMAGENET_MEAN", "IMAGENET_STD", "build_transforms", "table_from_csv", "table_from_folder", "table_from_paths",
]
