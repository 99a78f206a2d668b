"""What the network's maps show: Grad-CAM of the embedding first, then the attention gates per stage.

Grad-CAM of the embedding (``models.gradcam.grad_cam``) is "where the embedding looks": the
feature-map locations that make the image's descriptor what it is. The attention maps
(``RetrievalNet.attention_maps``: CBAM's spatial gate of the last block of every stage, or
BAM's average gate after stages 1–3) are not that. They multiply the residual branch of a
block (CBAM) or the added term F ⊗ σ(M) (BAM), while the identity path carries the features
on unchanged; a low gate value at a location does not mean the network ignores it. The
figure labels them so (docs/training.md, "What the attention maps are and are not"). Each
map is upsampled over the image as the network saw it.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.gradcam import grad_cam
from ..schema import Config
from .plots import pyplot, save_figure

__all__ = ["GATE_LABEL", "GRAD_CAM_LABEL", "attention_figure", "grad_cam"]

# What each kind of map may claim (DESIGN.md "Attention and explanations").
GRAD_CAM_LABEL = "where the embedding looks (Grad-CAM)"
GATE_LABEL = "gate on the residual branch (not where the network looks)"

log = logging.getLogger(__name__)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _load(image_paths: Sequence[str | Path], cfg: Config, display: int):
    """(network input (B, 3, S, S), display images (B, display, display, 3) uint8) of the paths."""
    from ..data import build_transforms, load_image

    transform = build_transforms(cfg.data, train=False)
    tensors, shown = [], []
    for path in image_paths:
        image = load_image(path)
        tensors.append(transform(image))
        # Square resize like the test transform, so every overlay lines up with what the network saw.
        shown.append(np.asarray(image.resize((display, display))))
    return torch.stack(tensors), np.stack(shown)


def _upsample(maps: Tensor, size: int) -> np.ndarray:
    """(B, 1 or none, h, w) → (B, size, size) float32, bilinear."""
    if maps.dim() == 3:
        maps = maps[:, None]
    return F.interpolate(maps.float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()


def _span(m: np.ndarray) -> str:
    """The map's range as a caption: the colours are on the gate's absolute 0–1 scale."""
    return f"{float(m.min()):.2f}–{float(m.max()):.2f}"


def attention_figure(model: torch.nn.Module, image_paths: Sequence[str | Path], cfg: Config,
                     out_png: str | Path, display: int = 160, alpha: float = 0.5) -> Path:
    """Draw, per image (one row each): input | Grad-CAM of the embedding | the attention gate of each stage.

    model: a RetrievalNet (a model without spatial attention, model.attention none or se, gets
    the Grad-CAM column only); cfg: its config (the test transform's image size); display:
    side in pixels of each panel. Gate maps are drawn on their absolute 0–1 scale with their
    raw range in the panel title. Returns ``out_png``.
    """
    if not image_paths:
        raise ValueError("attention_figure: expected at least one image path")
    if len(image_paths) > 16:
        log.warning("attention_figure: %d images make a tall picture; showing the first 16", len(image_paths))
        image_paths = list(image_paths)[:16]
    plt = pyplot()  # fail on a missing matplotlib before any compute
    images, shown = _load(image_paths, cfg, display)
    gates = [label for label, _ in model.gate_modules()]
    was_training = model.training
    model.eval()
    try:
        stage_maps = model.attention_maps(images.to(_device(model))) if gates else []  # (B, 1, h, w) each
    finally:
        model.train(was_training)
    if not gates:
        log.info("attention_figure: the model has no spatial attention (model.attention=%s); drawing Grad-CAM only",
                 getattr(getattr(cfg, "model", None), "attention", "?"))
    cam = grad_cam(model, images)
    columns = [("input", None, False)]
    columns.append((f"{GRAD_CAM_LABEL}\n{cam.shape[-2]}×{cam.shape[-1]}", _upsample(cam, display), False))
    columns += [(f"{label} ({m.shape[-2]}×{m.shape[-1]})", _upsample(m.cpu(), display), True)
                for label, m in zip(gates, stage_maps)]

    rows = len(image_paths)
    fig, axes = plt.subplots(rows, len(columns), figsize=(2.3 * len(columns), 2.4 * rows + 0.5), squeeze=False)
    for r in range(rows):
        for c, (title, maps, is_gate) in enumerate(columns):
            ax = axes[r][c]
            ax.imshow(shown[r])
            lines = [title] if r == 0 else []
            if maps is not None:
                # Gates on their absolute scale (a weak gate looks weak); Grad-CAM is relative by nature.
                ax.imshow(maps[r], cmap="jet", alpha=alpha, vmin=0.0, vmax=1.0)
                lines.append(f"gate range {_span(maps[r])}" if is_gate else "scaled to max 1")
            ax.set_title("\n".join(lines), fontsize=6)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(Path(image_paths[r]).name[:24], fontsize=7)
    suptitle = f"Grad-CAM: {GRAD_CAM_LABEL}"
    if gates:
        suptitle += f"; attention maps: {GATE_LABEL} (0 blue … 1 red)"
    fig.suptitle(suptitle, fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out_png)
