"""``model.attention``: which attention family the backbone carries, and where (DESIGN.md "Attention").

* ``cbam``: CBAM (Woo et al. 2018) in every residual block, on the residual branch;
* ``se``: CBAM's channel gate alone in every block (Hu et al. 2018's squeeze-and-excitation
  when ``model.cbam_pool=avg``; with ``avg_max`` it is the channel-only variant CBAM compares
  against, which is what ``model.cbam_spatial=false`` built before this key existed);
* ``bam``: BAM (Park et al. 2018) at the bottlenecks after stages 1–3;
* ``none``: torchvision's plain ResNet.

Each entry turns the model config and the resolved init (``paper`` | ``identity``) into an
``AttentionPlan``: a module factory per block, per bottleneck, or neither.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..registry import Registry
from ..schema import ModelConfig
from .bam import BAM
from .cbam import CBAM

# Parameter names of attention modules: ``layerN.i.cbam.*`` in blocks, ``bamN.*`` at bottlenecks.
_ATTENTION_KEY = re.compile(r"(^|\.)(cbam|bam\d)\.")


@dataclass(frozen=True)
class AttentionPlan:
    """Factories ``channels → module``: ``block`` into every residual block, ``bottleneck`` after stages 1–3."""

    block: Callable[[int], nn.Module] | None = None
    bottleneck: Callable[[int], nn.Module] | None = None


def _cbam(cfg: ModelConfig, init: str, spatial: bool = True) -> AttentionPlan:
    return AttentionPlan(block=functools.partial(
        CBAM, reduction=cfg.cbam_reduction, kernel_size=cfg.cbam_kernel, arrangement=cfg.cbam_arrangement,
        pool=cfg.cbam_pool, spatial=spatial, init=init))


# model.attention → the plan built from (model config, resolved init).
ATTENTIONS = Registry("model.attention", {
    "cbam": _cbam,
    "bam": lambda cfg, init: AttentionPlan(bottleneck=functools.partial(BAM, reduction=cfg.cbam_reduction, init=init)),
    "se": lambda cfg, init: _cbam(cfg, init, spatial=False),
    "none": lambda cfg, init: AttentionPlan(),
})


def build_attention(cfg: ModelConfig, init: str) -> AttentionPlan:
    """The ``AttentionPlan`` of ``cfg.attention`` with gates initialised as ``init`` (paper | identity)."""
    return ATTENTIONS[cfg.attention](cfg, init)


def is_attention_parameter(name: str) -> bool:
    """True for a parameter / state-dict key of an attention module (CBAM, SE or BAM), e.g. ``layer1.0.cbam.…``."""
    return _ATTENTION_KEY.search(name) is not None
