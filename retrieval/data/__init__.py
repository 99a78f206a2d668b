"""Data: benchmark and user sources → records → datasets, transforms, m-per-class loaders, synthetic data.

The names below load their module on first use (PEP 562): decoding or listing images needs
Pillow only, so the commands that need no model (a cached ONNX query, ``verify``) do not pay for
importing torch and torchvision through the datasets and transforms.
"""
from __future__ import annotations

import importlib

# name → the submodule that defines it (attribute name there, when it differs)
_WHERE = {
    "ImageDataset": "dataset", "PathsDataset": "dataset", "build_splits": "dataset", "crop_box": "dataset",
    "decode_image": "images", "list_images": "images", "load_image": "images", "verify_images": "images",
    "build_eval_loader": "loaders", "build_train_loader": "loaders", "load_records": "splits",
    "MPerClassBatchSampler": "samplers", "generate_synthetic": ("synthetic", "generate"),
    "table_from_csv": "tables", "table_from_folder": "tables", "table_from_paths": "tables",
    "IMAGENET_MEAN": "transforms", "IMAGENET_STD": "transforms", "build_transforms": "transforms",
}

__all__ = list(_WHERE)


def __getattr__(name: str):
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = where if isinstance(where, tuple) else (where, name)
    value = getattr(importlib.import_module(f".{module}", __name__), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
