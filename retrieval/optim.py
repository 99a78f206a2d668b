"""Optimizers with a proxy parameter group, and per-step learning-rate schedules with warm-up."""
from __future__ import annotations

import math
import re
from typing import Callable

import torch

from .registry import Registry
from .schema import OptimConfig

# Parameters of attention modules: CBAM and SE in blocks (``layerN.i.cbam.*``), BAM at the
# bottlenecks (``backbone.bamN.*``); the same pattern as models.attention.is_attention_parameter.
_ATTENTION = re.compile(r"(^|\.)(cbam|bam\d)\.")

# optim.name → torch optimizer built from (parameter groups, config).
OPTIMIZERS = Registry("optim.name", {
    "adam": lambda groups, cfg: torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay),
    "adamw": lambda groups, cfg: torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay),
    "sgd": lambda groups, cfg: torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                                               weight_decay=cfg.weight_decay),
})


def _step(epoch: float, progress: float, cfg: OptimConfig) -> float:
    return cfg.gamma ** sum(epoch >= e for e in cfg.step_epochs)


def _cosine(epoch: float, progress: float, cfg: OptimConfig) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# optim.scheduler → lr multiplier after warm-up, from (epoch, fraction of the post-warm-up steps done, config).
SCHEDULES: Registry = Registry("optim.scheduler", {
    "none": lambda epoch, progress, cfg: 1.0,
    "step": _step,
    "cosine": _cosine,
})


def build_optimizer(cfg: OptimConfig, model: torch.nn.Module, loss: torch.nn.Module) -> torch.optim.Optimizer:
    """Model parameters at ``cfg.lr``; loss parameters (proxies) at ``cfg.lr * cfg.proxy_lr_mult``; attention
    modules' (CBAM, SE, BAM) at ``cfg.lr * cfg.attention_lr_mult`` (their own group only when it is not 1).

    Proxy-Anchor (Kim et al. 2020, §4.1) trains proxies 100× faster than the network: they start
    random while the backbone starts pretrained. CBAM's spatial gate starts flat (its BN scale is
    0 in the official initialisation) and Adam moves a weight by about lr per step, so within a
    few hundred steps the gates barely move unless their lr is higher (docs/training.md).
    """
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    attention = [p for n, p in trainable if _ATTENTION.search(n)] if cfg.attention_lr_mult != 1 else []
    chosen = {id(p) for p in attention}
    groups = [{"params": [p for _, p in trainable if id(p) not in chosen], "lr": cfg.lr, "name": "model"}]
    if attention:
        groups.append({"params": attention, "lr": cfg.lr * cfg.attention_lr_mult, "name": "attention"})
    loss_params = [p for p in loss.parameters() if p.requires_grad]
    if loss_params:
        groups.append({"params": loss_params, "lr": cfg.lr * cfg.proxy_lr_mult, "name": "loss"})
    return OPTIMIZERS[cfg.name](groups, cfg)


def lr_factor(step: int, cfg: OptimConfig, steps_per_epoch: int, epochs: int) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based): linear warm-up, then the schedule."""
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    total = max(1, epochs * steps_per_epoch - warmup)
    schedule: Callable[[float, float, OptimConfig], float] = SCHEDULES[cfg.scheduler]
    return schedule(step / steps_per_epoch, (step - warmup) / total, cfg)


def build_scheduler(cfg: OptimConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int):
    """A per-step LambdaLR; its state dict is plain data (the lambda is rebuilt from the config)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg, steps_per_epoch, epochs))
