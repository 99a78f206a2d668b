"""Where the network looks: CBAM spatial attention per stage and a Grad-CAM of the embedding.

CBAM's argument (Woo et al. 2018, §4.3 and Fig. 4) is that the attention gates focus the
network on the object; the figure puts, for each image, the input, the spatial-gate map of
the last block of every stage (``RetrievalNet.attention_maps``) and a Grad-CAM of the
embedding side by side, each upsampled over the image.

Grad-CAM target. Grad-CAM (Selvaraju et al. 2017) needs a scalar to differentiate. The
natural "self-similarity" e·sg(e) of the final embedding has a zero gradient: e is
L2-normalised, and the Jacobian of x ↦ x/‖x‖ is (I − e eᵀ)/‖x‖, which maps e to 0. So the
target is taken one step earlier, on each CGD branch's output u_b = FC_b(pool_b(A)) (centred
by the head's BN when it has one) before its L2 normalisation (CGD §3.2):
y = Σ_b u_b · sg(u_b / ‖u_b‖), the projection of each branch onto its own (fixed) direction. Its gradient says which feature-map locations make the
image's descriptor stronger along the direction it already points to, i.e. what the
embedding is "made of". A is the last stage's feature map (the CGD head's input); weights
α_c = spatial mean of ∂y/∂A_c, map = ReLU(Σ_c α_c A_c), scaled to [0, 1] per image.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import Config
from ..errors import ConfigError
from .plots import pyplot, save_figure

log = logging.getLogger(__name__)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def grad_cam(model: torch.nn.Module, images: Tensor) -> Tensor:
    """Grad-CAM of the embedding (target: see the module docstring) on the last stage's map.

    model: a RetrievalNet; images: (B, 3, H, W) normalised float. Returns (B, h, w) float32
    in [0, 1] on the CPU, (h, w) the last feature map's size (H/16 or H/32). The model is run in
    eval mode (restored afterwards); no parameter gradients are accumulated.
    """
    was_training = model.training
    model.eval()
    try:
        images = images.to(_device(model), dtype=torch.float32)
        model.check_images(images)
        with torch.no_grad():
            features = model.backbone(images).float()
        with torch.enable_grad():
            feats = features.detach().requires_grad_(True)
            target = feats.new_zeros(())
            # (B, branch_dim) per branch, before its L2 normalisation (centred by BN with embedding_bn)
            for branch in model.head.branches([pool(feats) for pool in model.head.pools]):
                direction = F.normalize(branch, dim=1).detach()
                target = target + (branch * direction).sum()  # images are independent in eval mode
            (grads,) = torch.autograd.grad(target, feats)
    finally:
        model.train(was_training)
    weights = grads.mean(dim=(2, 3), keepdim=True)  # α_c (Grad-CAM Eq. 1)
    cam = F.relu((weights * feats.detach()).sum(dim=1))  # (B, h, w), Grad-CAM Eq. 2
    peak = cam.flatten(1).amax(dim=1).clamp(min=1e-12)[:, None, None]
    return (cam / peak).cpu()


def _check_attention(model: torch.nn.Module) -> None:
    backbone = getattr(model, "backbone", None)
    if backbone is None or not getattr(backbone, "has_attention", False):
        raise ConfigError("attention_figure: the model has no CBAM (it was built with model.cbam=false); "
                          "the attention picture needs a model trained with model.cbam=true")
    if any(getattr(stage[-1].cbam, "spatial", None) is None for stage in backbone.stages):
        raise ConfigError("attention_figure: the model's CBAM has no spatial gate (model.cbam_spatial=false); "
                          "there is no spatial attention map to draw")


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
    """Draw, per image (one row each): input | CBAM spatial attention of stages 1–4 | Grad-CAM.

    model: a RetrievalNet with CBAM spatial gates (else ConfigError); cfg: its config (the
    test transform's image size); display: side in pixels of each panel. Attention maps are
    the spatial gate's sigmoid output of each stage's last block, min-max stretched for
    display with the raw range in the panel title. Returns ``out_png``.
    """
    _check_attention(model)
    if not image_paths:
        raise ValueError("attention_figure: expected at least one image path")
    if len(image_paths) > 16:
        log.warning("attention_figure: %d images make a tall picture; showing the first 16", len(image_paths))
        image_paths = list(image_paths)[:16]
    plt = pyplot()  # fail on a missing matplotlib before any compute
    images, shown = _load(image_paths, cfg, display)
    was_training = model.training
    model.eval()
    try:
        stage_maps = model.attention_maps(images.to(_device(model)))  # 4 × (B, 1, h, w)
    finally:
        model.train(was_training)
    cam = grad_cam(model, images)
    columns = [("input", None)]
    columns += [(f"CBAM stage {i + 1} ({m.shape[-2]}×{m.shape[-1]})", _upsample(m.cpu(), display))
                for i, m in enumerate(stage_maps)]
    columns.append((f"Grad-CAM of embedding ({cam.shape[-2]}×{cam.shape[-1]})", _upsample(cam, display)))

    rows = len(image_paths)
    fig, axes = plt.subplots(rows, len(columns), figsize=(2.1 * len(columns), 2.25 * rows + 0.4), squeeze=False)
    for r in range(rows):
        for c, (title, maps) in enumerate(columns):
            ax = axes[r][c]
            ax.imshow(shown[r])
            lines = [title] if r == 0 else []
            if maps is not None:
                # Attention on its absolute scale (a weak gate looks weak); Grad-CAM is relative by nature.
                ax.imshow(maps[r], cmap="jet", alpha=alpha, vmin=0.0, vmax=1.0)
                lines.append(f"range {_span(maps[r])}" if c < len(columns) - 1 else "scaled to max 1")
            ax.set_title("\n".join(lines), fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(Path(image_paths[r]).name[:24], fontsize=7)
    fig.suptitle("Where the network looks: CBAM spatial attention (0 blue … 1 red = kept) "
                 "and Grad-CAM of the embedding",
                 fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out_png)
