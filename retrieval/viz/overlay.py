"""One picture per image: a map blended over the image, with a legend that says what the map is.

Two kinds of map (docs/training.md §2b):
- ``gradcam`` (the default): Grad-CAM of the embedding (``models.gradcam.grad_cam``), "where
  the embedding looks", scaled to its maximum;
- ``gates``: the last attention gate (CBAM's spatial gate of stage 4, BAM's after stage 3),
  absolute 0–1. It gates a residual term, not the map that is pooled: a low value does not
  mean "ignored", and the legend says so.

Pillow + numpy only (no matplotlib): the service draws these per request.
"""
from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from ..models.gradcam import grad_cam
from ..registry import Registry

# A compact blue → cyan → yellow → red ramp (value 0 … 1), enough to read a map.
_RAMP = np.array([[0, 0, 160], [0, 160, 255], [255, 230, 0], [220, 20, 20]], dtype=np.float32)
LEGEND_HEIGHT = 34  # pixels under the picture: the ramp and what the map is

# The overlay's ``kind`` → its legend (what a person reads under the picture).
MAP_KINDS = Registry("overlay kind", {
    "gradcam": "Grad-CAM of the embedding: where it looks (scaled to its max)",
    "gates": "last attention gate (0-1): a gate on a residual term, not where it looks",
})


def colourise(values: np.ndarray) -> np.ndarray:
    """values (H, W) in [0, 1] → RGB uint8 (H, W, 3) on the ramp."""
    v = np.clip(values, 0, 1) * (len(_RAMP) - 1)
    low = np.floor(v).astype(int).clip(0, len(_RAMP) - 2)
    t = (v - low)[..., None]
    return ((1 - t) * _RAMP[low] + t * _RAMP[low + 1]).astype(np.uint8)


def map_of(model: torch.nn.Module, image: torch.Tensor, kind: str = "gradcam") -> np.ndarray:
    """The ``kind`` map (h, w) in [0, 1] of one normalised image (3, H, W); ValueError for gates without any."""
    MAP_KINDS.check(kind)
    if kind == "gradcam":
        return grad_cam(model, image[None])[0].numpy()
    if not model.gate_modules():
        raise ValueError("kind: this model has no spatial attention gate (model.attention none or se); "
                         "ask for gradcam")
    with torch.no_grad():
        return model.attention_maps(image[None].float())[-1][0, 0].cpu().numpy()


def _legend(width: int, text: str) -> Image.Image:
    """A strip: the colour ramp from low (left) to high (right), and ``text`` under it."""
    strip = Image.new("RGB", (width, LEGEND_HEIGHT), "white")
    ramp = colourise(np.tile(np.linspace(0, 1, width, dtype=np.float32), (10, 1)))
    strip.paste(Image.fromarray(ramp), (0, 0))
    draw = ImageDraw.Draw(strip)
    font = ImageFont.load_default()
    draw.text((2, 12), "low", fill="black", font=font)
    draw.text((width - 26, 12), "high", fill="black", font=font)
    draw.text((2, 22), text[: max(width // 6, 1)], fill="black", font=font)
    return strip


def overlay_png(model: torch.nn.Module, picture: Image.Image, tensor: torch.Tensor, kind: str = "gradcam",
                alpha: float = 0.6, size: int = 224) -> bytes:
    """PNG bytes: ``picture`` (fed to the network as ``tensor`` (3, H, W)) with its ``kind`` map over it, and a legend.

    The picture is resized square, as the test transform does, so the map lines up with it.
    """
    values = map_of(model, tensor, kind)
    up = F.interpolate(torch.as_tensor(values)[None, None], size=(size, size), mode="bilinear",
                       align_corners=False)[0, 0].numpy()
    base = np.asarray(picture.convert("RGB").resize((size, size)), dtype=np.float32)
    # Opacity follows the map, so a low value shows the picture and a high one the colour: a
    # uniform wash (the old overlay) hid both.
    weight = alpha * np.clip(up, 0, 1)[..., None]
    blended = (1 - weight) * base + weight * colourise(up).astype(np.float32)
    canvas = Image.new("RGB", (size, size + LEGEND_HEIGHT), "white")
    canvas.paste(Image.fromarray(blended.clip(0, 255).astype(np.uint8)), (0, 0))
    canvas.paste(_legend(size, MAP_KINDS[kind]), (0, size))
    out = io.BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue()
