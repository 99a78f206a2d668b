"""m-per-class batches, single-process and distributed, reproducible per (seed, epoch, rank).

Follows pytorch-metric-learning's ``MPerClassSampler`` (samplers/m_per_class_sampler.py):
each batch takes ``batch_size / m`` classes, shuffled, and ``m`` images of each, drawn
without replacement (with replacement when a class has fewer than ``m``). PML draws from
numpy's global random state, so its batches depend on everything that ran before; here they
come from a generator seeded with (seed, epoch) so a resumed run replays the same batches.

Distributed: every step draws one global batch of ``world_size × batch_size`` images from
``world_size × batch_size / m`` distinct classes and rank r takes the r-th slice, so ranks get
disjoint classes, disjoint images and batches of the same size and kind.
"""
from __future__ import annotations

import logging
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from ..errors import DataError

log = logging.getLogger(__name__)


class MPerClassBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices: ``batch_size / m`` classes × ``m`` images each.

    labels: (N,) integer class labels of the dataset. ``class_ids`` (optional, per label value)
    only names classes in error messages. ``num_batches``: batches per epoch per rank
    (default: N // (batch_size × world_size), at least 1).
    """

    def __init__(self, labels: Sequence[int], m: int, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, num_batches: int | None = None,
                 class_ids: Sequence[int] | None = None) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        if m < 1 or batch_size % m:
            raise DataError(f"data.batch_size={batch_size} must be a positive multiple of data.m_per_class={m}")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in 0..{world_size - 1}")
        self.m, self.batch_size, self.seed = int(m), int(batch_size), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0
        classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        name = (lambda c: int(class_ids[c])) if class_ids is not None else int
        small = [(name(c), int(n)) for c, n in zip(classes, counts) if n < 2]
        if small:
            listed = ", ".join(f"class {c}: {n} image" for c, n in small[:10])
            raise DataError(f"{len(small)} training class(es) have fewer than 2 images, so they give no "
                            f"positive pair ({listed}); remove them or choose other train classes")
        order = np.argsort(inverse, kind="stable")
        self.class_indices = np.split(order, np.cumsum(counts)[:-1])  # per class: its dataset indices
        per_step = world_size * batch_size // m
        if per_step > len(classes):
            ranks = f" × {world_size} ranks" if world_size > 1 else ""
            raise DataError(
                f"data.batch_size={batch_size} with data.m_per_class={m} needs {batch_size // m} classes per "
                f"batch{ranks} = {per_step} distinct classes, but the train split has {len(classes)}; "
                "lower data.batch_size or raise data.m_per_class")
        short = int((counts < m).sum())
        if short:
            log.warning("%d of %d classes have fewer than m=%d images; their images repeat within a batch",
                        short, len(classes), m)
        self.num_batches = num_batches or max(1, len(labels) // (batch_size * world_size))

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches ``__iter__`` yields (call before every epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def _global_batch(self, rng: np.random.Generator) -> np.ndarray:
        """(world_size × batch_size,) indices, m consecutive per class, classes all distinct."""
        chosen = rng.permutation(len(self.class_indices))[: self.world_size * self.batch_size // self.m]
        parts = []
        for c in chosen:
            pool = self.class_indices[c]
            parts.append(rng.choice(pool, size=self.m, replace=len(pool) < self.m))
        return np.concatenate(parts)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])  # the same stream on every rank
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        for _ in range(self.num_batches):
            yield self._global_batch(rng)[lo:hi].tolist()
