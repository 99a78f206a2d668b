"""DataLoaders: m-per-class training batches and ordered evaluation batches."""
from __future__ import annotations


import torch
from torch.utils.data import DataLoader

from ..schema import DataConfig
from ..seeding import seed_worker
from .dataset import ImageDataset
from .samplers import MPerClassBatchSampler


def build_train_loader(dataset: ImageDataset, cfg: DataConfig, seed: int, rank: int = 0,
                       world_size: int = 1) -> DataLoader:
    """Batches of ``cfg.batch_size`` images per process, ``cfg.m_per_class`` per class.

    Call ``loader.batch_sampler.set_epoch(epoch)`` before each epoch: the batches are a pure
    function of (seed, epoch, rank), so a resumed run sees the same ones.
    """
    sampler = MPerClassBatchSampler(dataset.labels, cfg.m_per_class, cfg.batch_size, seed=seed, rank=rank,
                                    world_size=world_size, class_ids=dataset.class_ids)
    generator = torch.Generator()
    generator.manual_seed(seed * 1000 + rank)  # worker base seeds differ per rank
    # Workers restart every epoch (not persistent) so their seeds come from the generator the
    # trainer reseeds per (seed, epoch, rank): crops and flips replay exactly after a resume.
    # Forking is cheap, and a filled image cache is inherited from the main process.
    return DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers, worker_init_fn=seed_worker,
                      generator=generator, persistent_workers=False,
                      pin_memory=torch.cuda.is_available())


def build_eval_loader(dataset: ImageDataset, batch_size: int, num_workers: int) -> DataLoader:
    """Batches in dataset order (no shuffle, last batch kept): embeddings line up with ``dataset.labels``."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False, num_workers=num_workers,
                      worker_init_fn=seed_worker, pin_memory=torch.cuda.is_available())
