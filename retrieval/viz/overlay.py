"""One picture per image: where the network looks, blended over the image (Pillow + numpy, no matplotlib).

The CBAM spatial attention of the last stage when the model has it (Woo et al. 2018, §3.2),
else the Grad-CAM of the embedding (``viz.attention.grad_cam``); drawn with a blue → red
colour ramp over the image as the network saw it (square, at its input size).
"""
from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .attention import grad_cam

# A compact blue → cyan → yellow → red ramp (value 0 … 1), enough to read an attention map.
_RAMP = np.array([[0, 0, 160], [0, 160, 255], [255, 230, 0], [220, 20, 20]], dtype=np.float32)


def colourise(values: np.ndarray) -> np.ndarray:
    """values (H, W) in [0, 1] → RGB uint8 (H, W, 3) on the ramp."""
    v = np.clip(values, 0, 1) * (len(_RAMP) - 1)
    low = np.floor(v).astype(int).clip(0, len(_RAMP) - 2)
    t = (v - low)[..., None]
    return ((1 - t) * _RAMP[low] + t * _RAMP[low + 1]).astype(np.uint8)


def where_it_looks(model: torch.nn.Module, image: torch.Tensor) -> tuple[np.ndarray, str]:
    """(map (h, w) in [0, 1], what it is) of one normalised image (3, H, W)."""
    spatial = getattr(getattr(model.backbone.layer4[-1], "cbam", None), "spatial", None)
    if spatial is not None:
        was = model.training
        model.eval()
        try:
            maps = model.attention_maps(image[None].float())
        finally:
            model.train(was)
        return maps[-1][0, 0].cpu().numpy(), ("CBAM spatial gate of the last stage, absolute 0–1 "
                                              "(a gate on the residual branch, not where the network looks)")
    return grad_cam(model, image[None])[0].numpy(), "Grad-CAM of the embedding (scaled to its maximum)"


def overlay_png(model: torch.nn.Module, picture: Image.Image, tensor: torch.Tensor, alpha: float = 0.5,
                size: int = 224) -> bytes:
    """PNG bytes (size × size): ``picture`` (fed to the network as ``tensor`` (3, H, W)) with its attention map over it.

    The picture is resized square, as the test transform does, so the map lines up with it.
    """
    values, _ = where_it_looks(model, tensor)
    h = w = size
    up = F.interpolate(torch.as_tensor(values)[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    base = np.asarray(picture.convert("RGB").resize((w, h)), dtype=np.float32)
    blended = (1 - alpha) * base + alpha * colourise(up.numpy()).astype(np.float32)
    out = io.BytesIO()
    Image.fromarray(blended.clip(0, 255).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()
