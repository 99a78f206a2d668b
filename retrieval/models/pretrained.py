"""Load ImageNet or local torchvision-format weights into a ``ResNetBackbone``.

``imagenet`` uses torchvision's weights API (cached under ``torch.hub.get_dir()/checkpoints``);
a path loads a torchvision-format state dict. CBAM parameters are new (expected missing) and
torchvision's ``fc`` is not part of the backbone (expected unexpected); any other missing key
or shape mismatch means the file does not fit and is an error.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

import torch
from torchvision.models import get_weight

from ..errors import CheckpointError
from .attention import is_attention_parameter
from .backbone import ResNetBackbone
from .efficientnet_lite import EfficientNetLiteBackbone, imagenet_weights_file, load_lite_state

log = logging.getLogger(__name__)

# The original torchvision ImageNet weights (V1): what CBAM- and CGD-era papers fine-tuned from.
IMAGENET_WEIGHTS = {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "resnet34": "ResNet34_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V1",
    "resnet101": "ResNet101_Weights.IMAGENET1K_V1",
}


class LoadReport(NamedTuple):
    missing: list[str]  # backbone keys the file lacked (CBAM parameters only, else it is an error)
    unexpected: list[str]  # file keys the backbone has no place for (torchvision's fc.*)


def imagenet_cache_file(arch: str) -> Path:
    """Where torchvision keeps (or expects) the ImageNet weights of ``arch``."""
    url = get_weight(IMAGENET_WEIGHTS[arch]).url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet state dict for ``arch``: from the torch hub cache, else downloaded."""
    weights = get_weight(IMAGENET_WEIGHTS[arch])
    target = imagenet_cache_file(arch)
    try:
        # torch.hub directly (not weights.get_state_dict) to read the file with weights_only=True.
        return torch.hub.load_state_dict_from_url(weights.url, progress=True, check_hash=True, weights_only=True)
    except Exception as err:  # URLError, socket, hash and unpickling errors all mean "no usable file"
        raise CheckpointError(
            f"model.pretrained=imagenet: could not get the {arch} ImageNet weights ({type(err).__name__}: {err}). "
            f"Offline? Download {weights.url} on a machine with internet and place it as {target.name} "
            f"in {target.parent}/ (or set model.pretrained=/path/to/{target.name})") from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A torchvision-format state dict from ``path`` (``weights_only``; ``state_dict`` wrapper and ``module.`` prefix accepted)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model.pretrained: weights file not found: {path} (expected none, imagenet or a path)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated/foreign files
        raise CheckpointError(f"{path}: not a readable state dict ({type(err).__name__}: {err})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a torchvision-format state dict (parameter name → tensor)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_backbone_weights(backbone: ResNetBackbone, state: dict[str, torch.Tensor], source: str = "weights") -> LoadReport:
    """Copy ``state`` into ``backbone``; log the missing/unexpected keys; raise when it does not fit."""
    own = backbone.state_dict()
    bad_shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad_shapes:
        raise CheckpointError(f"{source}: shapes do not fit {backbone.arch} ({len(bad_shapes)} keys), e.g. "
                              + "; ".join(bad_shapes[:3]))
    result = backbone.load_state_dict(state, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    not_attention = [k for k in missing if not is_attention_parameter(k)]
    if not_attention:
        raise CheckpointError(f"{source}: {len(not_attention)} {backbone.arch} keys missing from the file, e.g. "
                              f"{', '.join(not_attention[:5])} (expected a torchvision-format state dict)")
    extra = [k for k in unexpected if not k.startswith("fc.")]
    log.info("loaded %s into %s: %d keys; %d missing (new attention parameters); %d unused (%s)",
             source, backbone.arch, len(state) - len(unexpected), len(missing), len(unexpected),
             "classifier fc" if not extra else "incl. non-fc")
    if extra:
        log.warning("%s: %d keys not used by %s: %s", source, len(extra), backbone.arch, ", ".join(extra[:10]))
    return LoadReport(missing, unexpected)


def load_pretrained(backbone: ResNetBackbone | EfficientNetLiteBackbone, pretrained: str) -> LoadReport | None:
    """Apply ``model.pretrained``: "none" (nothing), "imagenet", or a path to a state dict."""
    if pretrained == "none":
        return None
    if isinstance(backbone, EfficientNetLiteBackbone):
        load_lite_weights(backbone, pretrained)
        return None
    if pretrained == "imagenet":
        return load_backbone_weights(backbone, imagenet_state_dict(backbone.arch), f"ImageNet {backbone.arch}")
    return load_backbone_weights(backbone, read_state_dict(pretrained), str(pretrained))


def load_lite_weights(backbone: EfficientNetLiteBackbone, pretrained: str) -> None:
    """``imagenet`` (the file the weights package installs) or a path, in that package's own format."""
    if pretrained == "imagenet":
        load_lite_state(backbone, read_state_dict(imagenet_weights_file(backbone.arch)), "ImageNet")
    else:
        load_lite_state(backbone, read_state_dict(pretrained), str(pretrained))
