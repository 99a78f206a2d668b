"""Metric-learning losses and miners from pytorch-metric-learning, plus CGD's classification loss.

Nothing here re-implements a loss: ``LOSSES`` and ``MINERS`` name PML classes with the
arguments a config may set (``loss.args``, ``loss.miner_args``) and the project's defaults
for them. The combined objective is ``metric_loss + cls_weight * CE(logits / τ, labels; ε)``
as in CGD (Jun et al. 2019, §3.3: ranking loss plus an auxiliary softmax loss with label
smoothing and temperature scaling; τ is applied inside the model's classifier).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from pytorch_metric_learning import losses, miners

from .coerce import coerce
from .errors import ConfigError
from .registry import Registry
from .schema import LossConfig


@dataclass(frozen=True)
class Component:
    """A PML class, the arguments a config may set (with the project's defaults) and their checks.

    proxies: the class owns learnable class proxies, so it is built with
    ``(num_classes, embedding_size)`` and its parameters get their own learning rate.
    follows_loss: (miners) arguments taken from the loss's own when not set, e.g. the
    semi-hard miner's margin is the triplet margin unless ``loss.miner_args`` says otherwise.
    """
    cls: type | None
    defaults: dict[str, Any] = field(default_factory=dict)
    positive: tuple[str, ...] = ()
    non_negative: tuple[str, ...] = ()
    proxies: bool = False
    follows_loss: tuple[str, ...] = ()

    def resolve(self, args: dict[str, Any] | None, key: str) -> dict[str, Any]:
        """``defaults`` updated by ``args``; ConfigError naming ``key.arg`` for an unknown, mistyped or bad value."""
        out = dict(self.defaults)
        for name, value in (args or {}).items():
            if name not in self.defaults:
                allowed = ", ".join(self.defaults) or "none"
                raise ConfigError(f"{key}.{name}: not an argument of this choice (allowed: {allowed})")
            out[name] = coerce(f"{key}.{name}", value, type(self.defaults[name]))
        for name in self.positive:
            if not out[name] > 0:
                raise ConfigError(f"{key}.{name}: must be > 0, got {out[name]!r}")
        for name in self.non_negative:
            if not out[name] >= 0:
                raise ConfigError(f"{key}.{name}: must be >= 0, got {out[name]!r}")
        return out


# loss.name → PML loss. Defaults: CGD's triplet margin 0.1 (§4.1); Proxy-Anchor's α 32, δ 0.1
# (Kim et al. 2020); Multi-Similarity's α 2, β 50, λ 0.5 (Wang et al. 2019); ArcFace's margin is
# in degrees in PML (28.6° ≈ 0.5 rad, Deng et al. 2019). smooth_loss=True with margin 0 is the
# soft-margin triplet loss (Hermans et al. 2017, "In Defense of the Triplet Loss").
LOSSES = Registry("loss.name", {
    "triplet": Component(losses.TripletMarginLoss, {"margin": 0.1, "smooth_loss": False, "swap": False},
                         non_negative=("margin",)),
    "proxy_anchor": Component(losses.ProxyAnchorLoss, {"margin": 0.1, "alpha": 32.0}, positive=("alpha",),
                              non_negative=("margin",), proxies=True),
    "proxy_nca": Component(losses.ProxyNCALoss, {"softmax_scale": 32.0}, positive=("softmax_scale",),
                           proxies=True),
    "multi_similarity": Component(losses.MultiSimilarityLoss, {"alpha": 2.0, "beta": 50.0, "base": 0.5},
                                  positive=("alpha", "beta")),
    "arcface": Component(losses.ArcFaceLoss, {"margin": 28.6, "scale": 64.0}, positive=("scale",),
                         non_negative=("margin",), proxies=True),
})

# loss.miner → PML miner; None mines nothing (the loss uses every pair or triplet of the batch).
MINERS = Registry("loss.miner", {
    "batch_hard": Component(miners.BatchHardMiner),
    "semi_hard": Component(miners.TripletMarginMiner, {"margin": 0.1}, non_negative=("margin",),
                           follows_loss=("margin",)),
    "multi_similarity": Component(miners.MultiSimilarityMiner, {"epsilon": 0.1}, non_negative=("epsilon",)),
    "all": Component(None),
    "none": Component(None),
})


def resolve_arguments(cfg: LossConfig) -> LossConfig:
    """``cfg`` with ``args`` and ``miner_args`` completed by the chosen loss's and miner's defaults, each checked.

    The one place these arguments are resolved: config validation stores the result (so a saved
    config says every value used) and the loss is built from it; a resolved config comes back
    unchanged. A ``follows_loss`` miner argument not set in ``miner_args`` takes the loss's value
    from ``args`` when the config sets it there.
    """
    miner = MINERS[cfg.miner]
    given = dict(cfg.miner_args or {})
    for name in miner.follows_loss:
        if name not in given and name in (cfg.args or {}):
            given[name] = cfg.args[name]
    return dataclasses.replace(cfg, args=LOSSES[cfg.name].resolve(cfg.args, "loss.args"),
                               miner_args=miner.resolve(given, "loss.miner_args"))


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision (autocast) outputs up to float32 for the loss; float64 stays float64 (the DDP reference test)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def build_miner(cfg: LossConfig) -> torch.nn.Module | None:
    """The miner ``cfg.miner`` names (None for 'all'/'none': every pair or triplet of the batch)."""
    return _miner(resolve_arguments(cfg))


def _miner(cfg: LossConfig) -> torch.nn.Module | None:
    entry = MINERS[cfg.miner]
    return None if entry.cls is None else entry.cls(**cfg.miner_args)


def _metric_loss(cfg: LossConfig, num_classes: int, embedding_dim: int) -> torch.nn.Module:
    """The PML loss ``cfg.name`` names with the resolved ``cfg.args``; proxy losses get ``num_classes`` ×
    ``embedding_dim`` proxies."""
    entry = LOSSES[cfg.name]
    if entry.proxies:
        if num_classes < 2:
            raise ConfigError(f"loss.name={cfg.name} needs at least 2 training classes, got {num_classes}")
        return entry.cls(num_classes, embedding_dim, **cfg.args)
    return entry.cls(**cfg.args)


@dataclass
class LossOutput:
    total: torch.Tensor
    metric: torch.Tensor
    cls: torch.Tensor


class RetrievalLoss(torch.nn.Module):
    """Metric loss (+ miner) on embeddings plus weighted label-smoothed CE on classifier logits."""

    def __init__(self, cfg: LossConfig, num_classes: int, embedding_dim: int, distributed: bool = False):
        super().__init__()
        cfg = resolve_arguments(cfg)
        self.metric = _metric_loss(cfg, num_classes, embedding_dim)
        self.miner = _miner(cfg)
        self.cls_weight = cfg.cls_weight
        self.ce = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.distributed = distributed
        self.xbm = None
        if cfg.xbm_memory:
            # XBM (Wang et al., CVPR 2020): embeddings of the last xbm_memory samples, kept without
            # gradient, are mined against each batch, so hard pairs come from far more than 32 images.
            # PML keeps the memory in buffers (saved in checkpoints) but its fill position in plain
            # attributes, so a resumed run starts with an empty memory and refills it in
            # xbm_memory / batch_size steps.
            if distributed:
                raise ConfigError("loss.xbm_memory: not available under torchrun (each rank would keep its own "
                                  "memory); set loss.xbm_memory=0")
            self.xbm = losses.CrossBatchMemory(self.metric, embedding_dim, memory_size=cfg.xbm_memory,
                                               miner=self.miner)
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
        embeddings = _at_least_float32(embeddings)
        if self.xbm is not None:
            metric = self.xbm(embeddings, labels)  # mines the batch against itself and the memory
        else:
            pairs = self._miner_call(embeddings, labels) if self._miner_call is not None else None
            metric = self._metric_call(embeddings, labels, pairs)
        if logits is not None and self.cls_weight > 0:
            cls = self.ce(_at_least_float32(logits), labels)
        else:
            cls = embeddings.new_zeros(())
        return LossOutput(total=metric + self.cls_weight * cls, metric=metric.detach(), cls=cls.detach())
