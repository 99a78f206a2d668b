"""A folder per class: ``root/<class>/*.jpg``, optionally under split folders ``root/train/<class>/``,
``root/test/<class>/`` (or ``query/`` and ``gallery/``).

Class folders named by integers keep them as class ids; otherwise classes are numbered 0..
in sorted name order over all split folders (the name is kept in ``class_name``). Without
split folders the metric-learning split takes the first half of the classes (in id order)
for training and the rest for testing. Hidden files and non-image extensions are skipped.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import DataError
from .images import IMAGE_EXTENSIONS, list_images
from .records import SPLITS, make_records


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_folder(root: Path) -> pd.DataFrame:
    """Records of a folder-per-class tree (see the module docstring)."""
    if not root.is_dir():
        raise DataError(f"data.root: {root} is not a folder (data.name=folder expects root/<class>/<images>)")
    split_dirs = [d for d in _class_dirs(root) if d.name.lower() in SPLITS]
    groups = [(d.name.lower(), d) for d in split_dirs] if split_dirs else [(None, root)]
    entries = [(split, cls.name, img) for split, base in groups for cls in _class_dirs(base) for img in list_images(cls)]
    if not entries:
        raise DataError(f"{root}: no images found in class sub-folders (expected root/<class>/<image>"
                        f"{', with extensions ' + ' '.join(IMAGE_EXTENSIONS)})")
    names = sorted({name for _, name, _ in entries})
    numeric = all(name.isdigit() for name in names)
    ids = {name: (int(name) if numeric else i) for i, name in enumerate(names)}
    official = [split for split, _, _ in entries] if split_dirs else None
    extra = {} if numeric else {"class_name": [name for _, name, _ in entries]}
    return make_records([str(img) for _, _, img in entries], [ids[name] for _, name, _ in entries], official,
                        **extra)
