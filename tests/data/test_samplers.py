"""m-per-class batch sampler: composition, determinism per (seed, epoch), 2 simulated ranks, errors."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from retrieval.data import MPerClassBatchSampler
from retrieval.errors import DataError

LABELS = np.repeat(np.arange(12), [5, 6, 7, 3, 4, 8, 5, 5, 6, 2, 9, 4])  # uneven classes, one with 2 < m


def _epoch(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_every_batch_is_m_per_class():
    sampler = MPerClassBatchSampler(LABELS, m=4, batch_size=16, seed=0)
    batches = _epoch(sampler, 0)
    assert len(batches) == len(sampler) == len(LABELS) // 16
    for batch in batches:
        assert len(batch) == 16
        counts = Counter(LABELS[batch].tolist())
        assert len(counts) == 4 and set(counts.values()) == {4}
        for c in counts:  # without replacement whenever the class has m images
            idx = [i for i in batch if LABELS[i] == c]
            assert len(set(idx)) == min(4, int((LABELS == c).sum()))


def test_batches_are_a_function_of_seed_and_epoch():
    a = MPerClassBatchSampler(LABELS, m=2, batch_size=8, seed=3)
    b = MPerClassBatchSampler(LABELS, m=2, batch_size=8, seed=3)
    assert _epoch(a, 5) == _epoch(b, 5)  # a resumed run replays epoch 5
    assert _epoch(a, 5) != _epoch(a, 6)
    assert _epoch(a, 5) != _epoch(MPerClassBatchSampler(LABELS, m=2, batch_size=8, seed=4), 5)
    a.set_epoch(1)
    assert list(a) == list(a)  # iterating twice does not advance any state


def test_two_ranks_get_disjoint_batches_of_the_same_kind():
    ranks = [MPerClassBatchSampler(LABELS, m=2, batch_size=8, seed=1, rank=r, world_size=2) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(LABELS) // 16
    for epoch in (0, 1):
        b0, b1 = _epoch(ranks[0], epoch), _epoch(ranks[1], epoch)
        assert len(b0) == len(b1)
        for x, y in zip(b0, b1):
            assert len(x) == len(y) == 8
            assert not set(x) & set(y) and not set(LABELS[x]) & set(LABELS[y])
            for batch in (x, y):
                assert set(Counter(LABELS[batch].tolist()).values()) == {2}
    again = MPerClassBatchSampler(LABELS, m=2, batch_size=8, seed=1, rank=1, world_size=2)
    assert _epoch(again, 1) == _epoch(ranks[1], 1)


def test_not_enough_classes_is_a_clear_error():
    with pytest.raises(DataError, match="needs 8 classes per batch × 2 ranks = 16 distinct classes.*has 12"):
        MPerClassBatchSampler(LABELS, m=4, batch_size=32, world_size=2)


def test_class_with_one_image_is_named():
    labels = np.array([0, 0, 1, 1, 2, 3, 3])
    with pytest.raises(DataError, match="class 102: 1 image"):
        MPerClassBatchSampler(labels, m=2, batch_size=4, class_ids=[100, 101, 102, 103])
