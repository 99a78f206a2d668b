"""Metric-learning losses and miners from pytorch-metric-learning, plus CGD's classification loss.

Nothing here re-implements a loss: ``build_loss`` picks and configures PML objects. The
combined objective is ``metric_loss + cls_weight * CE(logits / τ, labels; ε)`` as in CGD
(Jun et al. 2019, §3.3: ranking loss plus an auxiliary softmax loss with label smoothing
and temperature scaling; τ is applied inside the model's classifier).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from pytorch_metric_learning import losses, miners

from .config import LossConfig
from .errors import ConfigError

# Losses that own learnable class weights (proxies); they need the class count and a
# parameter group of their own (Proxy-Anchor, Kim et al. 2020: proxies at 100× the lr).
PROXY_LOSSES = ("proxy_anchor", "proxy_nca", "arcface")


def build_miner(cfg: LossConfig) -> torch.nn.Module | None:
    """The miner named by ``cfg.miner`` (None for 'all'/'none': every pair or triplet of the batch)."""
    if cfg.miner == "batch_hard":
        return miners.BatchHardMiner()
    if cfg.miner == "semi_hard":
        return miners.TripletMarginMiner(margin=cfg.margin, type_of_triplets="semihard")
    if cfg.miner == "multi_similarity":
        return miners.MultiSimilarityMiner(epsilon=0.1)
    return None


def build_metric_loss(cfg: LossConfig, num_classes: int, embedding_dim: int) -> torch.nn.Module:
    """The PML loss named by ``cfg.name``; proxy losses get ``num_classes`` × ``embedding_dim`` proxies."""
    if cfg.name in PROXY_LOSSES and num_classes < 2:
        raise ConfigError(f"loss.name={cfg.name} needs at least 2 training classes, got {num_classes}")
    if cfg.name == "triplet":
        return losses.TripletMarginLoss(margin=cfg.margin)
    if cfg.name == "proxy_anchor":
        return losses.ProxyAnchorLoss(num_classes, embedding_dim, margin=cfg.margin, alpha=cfg.alpha)
    if cfg.name == "proxy_nca":
        return losses.ProxyNCALoss(num_classes, embedding_dim, softmax_scale=cfg.alpha)
    if cfg.name == "multi_similarity":
        return losses.MultiSimilarityLoss(alpha=cfg.ms_alpha, beta=cfg.ms_beta, base=cfg.ms_base)
    if cfg.name == "arcface":
        # PML's ArcFace margin is in degrees (28.6° ≈ 0.5 rad, Deng et al. 2019); scale = alpha.
        return losses.ArcFaceLoss(num_classes, embedding_dim, margin=cfg.margin, scale=cfg.alpha)
    raise ConfigError(f"loss.name: unknown loss '{cfg.name}'")


@dataclass
class LossOutput:
    total: torch.Tensor
    metric: torch.Tensor
    cls: torch.Tensor


class RetrievalLoss(torch.nn.Module):
    """Metric loss (+ miner) on embeddings plus weighted label-smoothed CE on classifier logits."""

    def __init__(self, cfg: LossConfig, num_classes: int, embedding_dim: int, distributed: bool = False):
        super().__init__()
        self.metric = build_metric_loss(cfg, num_classes, embedding_dim)
        self.miner = build_miner(cfg)
        self.cls_weight = cfg.cls_weight
        self.ce = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.distributed = distributed
        if distributed:
            # Gather embeddings of every rank before mining and the loss (PML's wrappers), so a
            # rank's batch is compared against the global batch, as in single-process training.
            from pytorch_metric_learning.utils import distributed as pml_dist

            metric_call = pml_dist.DistributedLossWrapper(self.metric)
            miner_call = pml_dist.DistributedMinerWrapper(self.miner) if self.miner else None
        else:
            metric_call, miner_call = self.metric, self.miner
        # Kept out of the module tree so the state dict is the same with and without DDP.
        self.__dict__["_metric_call"], self.__dict__["_miner_call"] = metric_call, miner_call

    def forward(self, embeddings: torch.Tensor, logits: torch.Tensor | None, labels: torch.Tensor) -> LossOutput:
        """embeddings: (B, D) L2-normalised; logits: (B, C) already divided by τ, or None; labels: (B,)."""
        embeddings = embeddings.float()
        pairs = self._miner_call(embeddings, labels) if self._miner_call is not None else None
        metric = self._metric_call(embeddings, labels, pairs)
        if logits is not None and self.cls_weight > 0:
            cls = self.ce(logits.float(), labels)
        else:
            cls = embeddings.new_zeros(())
        return LossOutput(total=metric + self.cls_weight * cls, metric=metric.detach(), cls=cls.detach())
