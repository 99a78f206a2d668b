"""BAM: Bottleneck Attention Module (Park, Woo, Lee, Kweon, BMVC 2018).

One BAM sits at each bottleneck of the network, after ResNet stages 1–3 (never after stage 4:
BAM §3 places it where the spatial size is halved, in front of a down-sampling stage). It
infers a 3-D attention from two branches computed in parallel on the same input F:

* channel branch M_c (BAM §3.1): global average pool → FC C→C/r → BN → ReLU → FC C/r→C;
* spatial branch M_s (BAM §3.2): 1×1 conv C→C/r → BN → ReLU → two 3×3 convs with
  dilation d (each → BN → ReLU) → 1×1 conv to one channel;

and applies it as a residual: F' = F + F ⊗ σ(M_c(F) + M_s(F)) (BAM Eq. 1–2), r = 16, d = 4.

Sum, not product. The paper combines the branches by broadcasting and summing them before
the sigmoid (Eq. 2; its ablation, Table 1, compares max, product and sum and keeps the sum). The
official code (github.com/Jongchan/attention-module, ``MODELS/bam.py``) instead computes
``1 + sigmoid(channel_att * spatial_att)``, a product. We follow the paper, as
DESIGN.md "Attention and explanations" specifies: the paper is what its numbers were
reported for, and with the sum a channel that the channel branch switches off stays off
everywhere, which a product of two signed logits cannot express. Layer sizes and the
"paper" initialisation follow the official code (Linear/conv with bias, PyTorch's default
Linear init, conv kaiming-normal fan_out, BN weight 1, every bias 0).

Identity start. σ never reaches 0, so F + F ⊗ σ(·) cannot equal F. With ``init="identity"``
the module computes F' = F + ⅔ · F ⊗ (σ(M) − ½) with the last layer of each branch at zero
(M = 0, so σ(M) − ½ = 0 exactly and F' = F exactly): the pretrained network's features are
unchanged at the first step. This is ⅔ · (F + F ⊗ σ(M)), the paper's form times a constant;
the next stage begins with conv → BN (its first block and its shortcut), which absorbs the
constant, so the set of functions is the paper's (the same argument as ``cbam.py``). The
zero-initialised last layers get gradients from the first step, so the attention learns at
the optimizer's pace rather than at the pace of a scale that starts at 0.
"""
from __future__ import annotations

from torch import Tensor, nn

from ..registry import Registry

# model.cbam_init → (a, b) in F' = F + a · F ⊗ (σ(M) − b): the paper's form, or the same
# form divided by 1.5 and centred so that M = 0 gives exactly F (see the module docstring).
INITS = Registry("model.cbam_init", {"paper": (1.0, 0.0), "identity": (2.0 / 3.0, 0.5)})


class BAMChannel(nn.Module):
    """BAM §3.1: x (B, C, H, W) → channel logits M_c (B, C, 1, 1)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                 nn.Linear(hidden, channels))

    @property
    def last(self) -> nn.Module:
        return self.mlp[-1]

    def forward(self, x: Tensor) -> Tensor:
        pooled = x.sum(dim=(2, 3)) / (x.shape[2] * x.shape[3])  # sum / (H·W): see cbam.ChannelGate.gate on bf16
        return self.mlp(pooled)[:, :, None, None]


class BAMSpatial(nn.Module):
    """BAM §3.2: x (B, C, H, W) → spatial logits M_s (B, 1, H, W) through dilated 3×3 convs."""

    def __init__(self, channels: int, reduction: int = 16, dilation: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)

        def conv_bn_relu(cin: int, kernel: int, dil: int = 1) -> list[nn.Module]:
            pad = dil * (kernel // 2)  # keeps H × W (padding = dilation for the 3×3, as the official code)
            return [nn.Conv2d(cin, hidden, kernel, padding=pad, dilation=dil), nn.BatchNorm2d(hidden), nn.ReLU()]

        self.body = nn.Sequential(*conv_bn_relu(channels, 1), *conv_bn_relu(hidden, 3, dilation),
                                  *conv_bn_relu(hidden, 3, dilation), nn.Conv2d(hidden, 1, 1))

    @property
    def last(self) -> nn.Module:
        return self.body[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class BAM(nn.Module):
    """Bottleneck attention on a feature map: (B, C, H, W) → F + a · F ⊗ (σ(M_c + M_s) − b), same shape.

    ``self.sigmoid`` outputs the 3-D attention σ(M_c + M_s) (B, C, H, W); visualisation hooks it
    (its channel mean is the average gate at each location).
    """

    def __init__(self, channels: int, reduction: int = 16, dilation: int = 4, init: str = "paper") -> None:
        super().__init__()
        if dilation < 1:
            raise ValueError(f"dilation: must be >= 1 (BAM uses 4), got {dilation}")
        self.scale, self.shift = INITS[init]
        self.channel = BAMChannel(channels, reduction)
        self.spatial = BAMSpatial(channels, reduction, dilation)
        self.sigmoid = nn.Sigmoid()
        self.reset_parameters(init)

    def reset_parameters(self, init: str) -> None:
        # Official init: conv kaiming-normal (fan_out), BN weight 1, every bias 0, Linear weights default.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                module.reset_parameters()
            elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        if init == "identity":  # M = 0 → σ(M) − ½ = 0 exactly
            for last in (self.channel.last, self.spatial.last):
                nn.init.zeros_(last.weight)

    def attention(self, x: Tensor) -> Tensor:
        """σ(M_c(x) + M_s(x)): (B, C, H, W) in (0, 1), the sum broadcast (BAM Eq. 2)."""
        return self.sigmoid(self.channel(x) + self.spatial(x))

    def forward(self, x: Tensor) -> Tensor:
        # paper: a = 1, b = 0 (exactly F + F ⊗ σ); identity: M = 0 makes the added term exactly 0
        return x + self.scale * x * (self.attention(x) - self.shift)
