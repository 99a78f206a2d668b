"""``SOURCES``: data.name → the reader of that format and its standard metric-learning split."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from ..errors import DataError
from ..registry import Registry
from ..schema import DataConfig
from . import cars, csv_source, cub, folder, inshop, sop
from .synthetic import generate


@dataclass(frozen=True)
class Source:
    """read: config → raw records (``official`` = the source's own split or None).

    train_classes: the class-id range of the standard metric-learning training split (CUB
    1–100, Cars196 1–98; Oh Song et al. 2016), or None when the source's own split column
    already is one (SOP, In-Shop, CSV / folder with splits) or it has none (first half of
    the classes then).
    """
    read: Callable[[DataConfig], pd.DataFrame]
    train_classes: list[int] | None = None


def _at_root(reader: Callable[[Path], pd.DataFrame]) -> Callable[[DataConfig], pd.DataFrame]:
    """A reader of ``data.root``, which must exist."""
    def read(cfg: DataConfig) -> pd.DataFrame:
        root = Path(cfg.root).expanduser()
        if not root.exists():
            raise DataError(f"data.root: {root} does not exist (data.name={cfg.name})")
        return reader(root.resolve())
    return read


def _synthetic(cfg: DataConfig) -> pd.DataFrame:
    """Generated shapes (written under data.root once; see synthetic.py), read as a CSV source."""
    root = generate(cfg.root, num_classes=cfg.synthetic_classes, per_class=cfg.synthetic_per_class,
                    size=cfg.synthetic_size)
    return csv_source.read_csv(root / "labels.csv")


SOURCES = Registry("data.name", {
    "synthetic": Source(_synthetic),
    "cub": Source(_at_root(cub.read_cub), [1, 100]),
    "cars": Source(_at_root(cars.read_cars), [1, 98]),
    "sop": Source(_at_root(sop.read_sop)),
    "inshop": Source(_at_root(inshop.read_inshop)),
    "folder": Source(_at_root(folder.read_folder)),
    "csv": Source(_at_root(csv_source.read_csv)),
})


def read_raw(cfg: DataConfig) -> pd.DataFrame:
    """The source's records before splitting (column ``official`` = its own split or None)."""
    raw = SOURCES[cfg.name].read(cfg)
    if raw.empty:
        raise DataError(f"{cfg.root}: no images found for data.name={cfg.name}")
    return raw
