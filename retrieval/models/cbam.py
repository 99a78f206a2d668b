"""CBAM: Convolutional Block Attention Module (Woo et al., ECCV 2018).

``ChannelGate`` (what to attend to), ``SpatialGate`` (where), and ``CBAM`` that applies
both, by default channel then spatial (CBAM §3, Fig. 2). Layer shapes and the "paper"
initialisation follow the official code (github.com/Jongchan/attention-module).

Identity start. A sigmoid gate can never be exactly 1, so a pretrained block with CBAM
added would start with its residual branch scaled by ~0.25 (channel gate ~0.5 times
spatial gate 0.5). With ``init="identity"`` each gate is ``2·sigmoid(z)`` and its last
layer starts at zero (z = 0), so every gate is exactly 1 and the block computes exactly
what the plain block computed. This is a reparametrisation, not a different model: the
factor 2 is a constant that the BatchNorm affine in front of the gate (bn2/bn3 of the
block, the spatial gate's own BN) absorbs, so the set of functions the block can
represent is the paper's. The zero-initialised last layers learn from the first step
(like torchvision's zero-init of the last BN in a block); a blend x + α·(CBAM(x) − x) with
α starting at 0 would instead scale every CBAM gradient by α, which Adam at 1e-4 moves
only slowly, so the gates would stay near-inert for a whole fine-tuning run.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..registry import Registry

# model.cbam_pool → the poolings the gates use (CBAM Tables 1–2: average and max together win).
POOLS = Registry("model.cbam_pool", {"avg": ("avg",), "max": ("max",), "avg_max": ("avg", "max")})

# model.cbam_init → the factor in front of each gate's sigmoid: 1 for the paper's plain
# sigmoid, 2 for the identity start (2·sigmoid(0) = 1; see the module docstring).
INITS = Registry("model.cbam_init", {"paper": 1.0, "identity": 2.0})


class ChannelGate(nn.Module):
    """Channel attention (CBAM §3.1): shared MLP over avg- and max-pooled vectors, summed, sigmoid.

    x: (B, C, H, W) → x · M_c(x), with M_c(x): (B, C, 1, 1).
    """

    def __init__(self, channels: int, reduction: int = 16, pool: str = "avg_max", init: str = "paper") -> None:
        super().__init__()
        self.pools = POOLS[pool]
        self.scale = INITS[init]
        hidden = max(channels // reduction, 1)
        # Linear layers with bias, as the official code (C → C/r → C, ReLU in between).
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))
        self.reset_parameters(init)

    def reset_parameters(self, init: str) -> None:
        # Official code: PyTorch's default Linear weights, every bias zero.
        for layer in (self.mlp[0], self.mlp[2]):
            layer.reset_parameters()
            nn.init.zeros_(layer.bias)
        if init == "identity":  # z = 0 → 2·sigmoid(0) = 1 exactly
            nn.init.zeros_(self.mlp[2].weight)

    def gate(self, x: Tensor) -> Tensor:
        """Channel weights (B, C, 1, 1)."""
        # The pooled vectors go through the shared MLP as one stacked batch (one matmul per
        # layer instead of two). The average is sum / (H·W): under bf16, ``mean`` first copies
        # the whole map to fp32, which made it twice as slow as the sum on CPU.
        vecs = [x.sum(dim=(2, 3)) / (x.shape[2] * x.shape[3]) if p == "avg" else x.amax(dim=(2, 3))
                for p in self.pools]
        logits = self.mlp(torch.cat(vecs)).view(len(vecs), *vecs[0].shape).sum(dim=0)
        return (self.scale * torch.sigmoid(logits))[:, :, None, None]

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)


class SpatialGate(nn.Module):
    """Spatial attention (CBAM §3.2): [max, mean] over channels → k×k conv (no bias) → BN → sigmoid.

    x: (B, C, H, W) → x · M_s(x), with M_s(x): (B, 1, H, W). ``self.sigmoid`` outputs the map
    in (0, 1) before the identity-start factor; visualisation hooks it.
    """

    def __init__(self, kernel_size: int = 7, pool: str = "avg_max", init: str = "paper") -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: must be a positive odd number (CBAM uses 3 or 7), got {kernel_size}")
        self.pools = tuple(reversed(POOLS[pool]))  # channel order [max, mean] as the official ChannelPool
        self.scale = INITS[init]
        self.conv = nn.Conv2d(len(self.pools), 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)  # momentum as the official BasicConv
        self.sigmoid = nn.Sigmoid()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Official init_weights: conv kaiming-normal (fan_out), the spatial gate's BN weight
        # and bias zero. BN output 0 → sigmoid 0.5 (paper) or 2·0.5 = 1 (identity start).
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def gate(self, x: Tensor) -> Tensor:
        """Spatial weights (B, 1, H, W)."""
        maps = [x.amax(dim=1, keepdim=True) if p == "max" else x.sum(dim=1, keepdim=True) / x.shape[1]
                for p in self.pools]  # sum / C: see ChannelGate.gate on bf16 ``mean``
        return self.scale * self.sigmoid(self.bn(self.conv(torch.cat(maps, dim=1))))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)


class CBAM(nn.Module):
    """Channel and spatial attention on a feature map: (B, C, H, W) → (B, C, H, W).

    arrangement (CBAM Table 3): ``channel_spatial`` (the paper's choice), ``spatial_channel``,
    or ``parallel``: both gates computed from the same input and multiplied in. The paper
    does not say how its parallel variant merges the two; the product is the smallest change
    from the sequential form, so the comparison isolates the ordering.
    ``spatial=False`` keeps the channel gate only (the SE-style variant; with ``pool="avg"``
    it is SE, Hu et al. 2018).
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        kernel_size: int = 7,
        arrangement: str = "channel_spatial",
        pool: str = "avg_max",
        spatial: bool = True,
        init: str = "paper",
    ) -> None:
        super().__init__()
        self.combine = ARRANGEMENTS[arrangement]
        INITS.check(init)
        self.arrangement = arrangement
        self.channel = ChannelGate(channels, reduction, pool, init)
        self.spatial = SpatialGate(kernel_size, pool, init) if spatial else None

    def forward(self, x: Tensor) -> Tensor:
        if self.spatial is None:
            return self.channel(x)
        return self.combine(self, x)


# model.cbam_arrangement → how CBAM applies its two gates (CBAM Table 3; see ``CBAM``).
ARRANGEMENTS = Registry("model.cbam_arrangement", {
    "channel_spatial": lambda cbam, x: cbam.spatial(cbam.channel(x)),
    "spatial_channel": lambda cbam, x: cbam.channel(cbam.spatial(x)),
    "parallel": lambda cbam, x: x * cbam.channel.gate(x) * cbam.spatial.gate(x),
})
