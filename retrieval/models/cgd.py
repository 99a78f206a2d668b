"""CGD head: combination of multiple global descriptors (Jun et al. 2019, arXiv:1903.10663).

Each descriptor is a generalised mean over the feature map (CGD Eq. 1): SPoC (p = 1), MAC
(p = ∞), GeM (p, 3 by default, fixed or learnable). Each branch: pool → FC without bias →
L2; the branches are concatenated and L2-normalised again (CGD §3.2, Fig. 2). The first
descriptor also feeds the auxiliary classifier: BN → FC without bias, logits / τ (CGD §3.3);
its label smoothing belongs to the loss.

Centring (``embedding_bn``, docs/training.md). The pooled descriptors come from post-ReLU
feature maps, so every one of them is a non-negative vector with a large shared mean, and a
linear map without bias keeps that mean: W(μ + δ) = Wμ + Wδ with ‖Wμ‖ ≫ ‖Wδ‖. After the L2
normalisation every embedding is then one shared direction plus a little signal (a cone:
all cosines ≈ 0.999, product quantisation spends its codes on the shared part), and a
triplet loss on such vectors collapses to its margin (all distances ≈ 0; PML issue #20).
With ``embedding_bn`` each branch's projection passes a BatchNorm whose shift is fixed at
zero before its L2 normalisation, as BNNeck does before the retrieval feature (Luo et al.
2019, "Bag of Tricks and a Strong Baseline for Deep Person Re-identification", §3.6): the
batch mean (running mean at test time) of every coordinate is removed, so the embeddings
spread over the sphere; the shift stays at zero so the loss cannot put the shared direction
back, while the learnable scale keeps the coordinates' relative weights (``bn_scale=False``:
no scale, every coordinate standardised, the "running mean without the learnable scale" of
issue #20).

Where the losses read (``metric_on``, ``classifier_on``; docs/training.md §1b). CGD's own
arrangement (§3.3) feeds the classifier the first pooled descriptor (BN → FC) and gives the
metric loss the retrieval embedding. BNNeck as Luo et al. build it (§3.6, Fig. 5) puts the
metric (triplet) loss on the features *before* the BN, the classification loss on the
features *after* it, and retrieves with the post-BN features: ``metric_on="pre_bn"`` gives
the metric loss each branch's projection before the centring BN (L2-normalised per branch
and concatenated, like the embedding), ``classifier_on="embedding"`` puts the classifier
(FC without bias, logits / τ) on the concatenated post-BN projections. Retrieval always
uses the post-BN embedding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import Registry

# model.descriptors letters → the descriptor's name (CGD Eq. 1: p = 1, p = ∞, p learnable or fixed).
DESCRIPTORS = Registry("model.descriptors", {"S": "SPoC", "M": "MAC", "G": "GeM"})
# model.metric_on: what the metric loss sees (module docstring).
METRIC_INPUTS = ("embedding", "pre_bn")
# model.classifier_on: what the auxiliary classifier reads.
CLASSIFIER_INPUTS = ("descriptor", "embedding")


def parse_descriptors(text: str) -> str:
    """``text`` upper-cased when it is distinct letters of DESCRIPTORS (e.g. "sg" → "SG"); else ConfigError."""
    letters = str(text).upper()
    if not letters or any(c not in DESCRIPTORS for c in letters) or len(set(letters)) != len(letters):
        raise ConfigError(f"model.descriptors: '{text}' must be distinct letters from {', '.join(DESCRIPTORS)} "
                          "(e.g. SG, MG, SMG)")
    return letters


class GlobalDescriptor(nn.Module):
    """Pool a feature map (B, C, H, W) → (B, C) float32: S = mean, M = max, G = GeM with exponent p."""

    def __init__(self, kind: str, p: float = 3.0, learnable: bool = False, eps: float = 1e-6) -> None:
        super().__init__()
        DESCRIPTORS.check(kind)
        if kind == "G" and p <= 0:
            raise ValueError(f"gem_p: must be > 0, got {p}")
        self.kind = kind
        self.eps = eps
        # A fixed p is a buffer, a learnable one a parameter: the same state-dict key either way,
        # and no parameter that never gets a gradient.
        if kind != "G":
            self.p = None
        elif learnable:
            self.p = nn.Parameter(torch.tensor(float(p)))
        else:
            self.register_buffer("p", torch.tensor(float(p)))

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()  # pow/mean of bf16 activations lose precision; pooling is cheap in fp32
        if self.kind == "S":
            return x.mean(dim=(2, 3))
        if self.kind == "M":
            return x.amax(dim=(2, 3))
        # GeM (Radenović et al. 2018): (mean x^p)^(1/p); clamp keeps pow defined and p's gradient finite.
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)

    def extra_repr(self) -> str:
        if self.p is None:
            return self.kind
        return f"{self.kind}, p={self.p.item():.3g}, learnable={isinstance(self.p, nn.Parameter)}"


def _check_head(descriptors: str, embedding_dim: int, num_classes: int, temperature: float, embedding_bn: bool,
                metric_on: str, classifier_on: str) -> None:
    """CGDHead's arguments, or ValueError naming the first wrong one."""
    if embedding_dim <= 0 or embedding_dim % len(descriptors):
        raise ValueError(f"embedding_dim: {embedding_dim} is not a positive multiple of the {len(descriptors)} "
                         f"descriptors '{descriptors}'")
    if num_classes < 0:
        raise ValueError(f"num_classes: must be >= 0, got {num_classes}")
    if temperature <= 0:
        raise ValueError(f"temperature: must be > 0, got {temperature}")
    if metric_on not in METRIC_INPUTS or classifier_on not in CLASSIFIER_INPUTS:
        raise ValueError(f"metric_on / classifier_on: '{metric_on}' / '{classifier_on}' not among "
                         f"{METRIC_INPUTS} / {CLASSIFIER_INPUTS}")
    if (metric_on, classifier_on) != ("embedding", "descriptor") and not embedding_bn:
        raise ValueError("metric_on=pre_bn and classifier_on=embedding need embedding_bn (they read around its BN)")


class CGDHead(nn.Module):
    """Feature map (B, C, H, W) → embeddings (B, embedding_dim), L2-normalised, float32.

    descriptors: letters from S, M, G (e.g. "SG"); embedding_dim is split evenly over them.
    num_classes > 0 adds ``classifier`` (BN → FC) on the first descriptor; 0 = none.
    """

    def __init__(
        self,
        in_channels: int,
        descriptors: str = "SG",
        embedding_dim: int = 1536,
        num_classes: int = 0,
        gem_p: float = 3.0,
        gem_learnable: bool = False,
        temperature: float = 0.5,
        embedding_bn: bool = False,
        metric_on: str = "embedding",
        classifier_on: str = "descriptor",
        bn_scale: bool = True,
    ) -> None:
        super().__init__()
        descriptors = parse_descriptors(descriptors)
        _check_head(descriptors, embedding_dim, num_classes, temperature, embedding_bn, metric_on, classifier_on)
        self.metric_on = metric_on
        self.classifier_on = classifier_on
        self.descriptors = descriptors
        self.embedding_dim = embedding_dim
        self.num_classes = num_classes
        self.temperature = temperature
        branch_dim = embedding_dim // len(descriptors)
        self.pools = nn.ModuleList(GlobalDescriptor(k, gem_p, gem_learnable) for k in descriptors)
        self.fcs = nn.ModuleList(nn.Linear(in_channels, branch_dim, bias=False) for _ in descriptors)
        self.bns: nn.ModuleList | None = None
        if embedding_bn and bn_scale:
            self.bns = nn.ModuleList(nn.BatchNorm1d(branch_dim) for _ in descriptors)
            for bn in self.bns:
                bn.bias.requires_grad_(False)  # shift fixed at 0: centred, see the module docstring
        elif embedding_bn:  # centre and standardise each coordinate, nothing learnt (model.embedding_bn_scale)
            self.bns = nn.ModuleList(nn.BatchNorm1d(branch_dim, affine=False) for _ in descriptors)
        self.classifier: nn.Sequential | None = None
        if num_classes and classifier_on == "descriptor":
            self.classifier = nn.Sequential(nn.BatchNorm1d(in_channels), nn.Linear(in_channels, num_classes, bias=False))
        elif num_classes:  # BNNeck: the post-BN features are already normalised per coordinate
            self.classifier = nn.Sequential(nn.Linear(embedding_dim, num_classes, bias=False))

    def _projections(self, pooled: list[Tensor]) -> list[Tensor]:
        return [fc(g) for fc, g in zip(self.fcs, pooled)]

    def _centred(self, parts: list[Tensor]) -> list[Tensor]:
        if self.bns is not None:
            parts = [bn(u) for bn, u in zip(self.bns, parts)]
        return [u.float() for u in parts]

    def branches(self, pooled: list[Tensor]) -> list[Tensor]:
        """Each branch's projection before its L2 normalisation: FC(pool), centred by BN with ``embedding_bn``."""
        return self._centred(self._projections(pooled))

    @staticmethod
    def _normalised(parts: list[Tensor]) -> Tensor:
        parts = [F.normalize(u.float(), dim=1) for u in parts]
        return F.normalize(torch.cat(parts, dim=1), dim=1)

    def _embed(self, pooled: list[Tensor]) -> Tensor:
        return self._normalised(self.branches(pooled))

    def forward(self, features: Tensor) -> Tensor:
        return self._embed([pool(features) for pool in self.pools])

    def forward_train(self, features: Tensor) -> tuple[Tensor, Tensor | None]:
        """What the metric loss sees (B, D) and classifier logits / τ (B, num_classes) float32 (None without one).

        The metric loss sees the retrieval embedding, or with ``metric_on="pre_bn"`` the same
        construction from the projections before the centring BN (BNNeck, module docstring).
        """
        pooled = [pool(features) for pool in self.pools]
        projections = self._projections(pooled)
        centred = self._centred(projections)  # also updates the BN's running statistics
        logits = None
        if self.classifier is not None:
            source = pooled[0] if self.classifier_on == "descriptor" else torch.cat(centred, dim=1)
            logits = self.classifier(source).float() / self.temperature
        seen = projections if self.metric_on == "pre_bn" else centred
        return self._normalised(seen), logits
