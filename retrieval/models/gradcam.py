"""Grad-CAM of the embedding: where the embedding "looks" (Selvaraju et al., ICCV 2017).

Used by the pictures (``viz.attention``, the service overlay) and by the localisation score
(``localisation_eval``); it lives with the model, which is all it needs.

Grad-CAM target. Grad-CAM needs a scalar to differentiate. The
natural "self-similarity" e·sg(e) of the final embedding has a zero gradient: e is
L2-normalised, and the Jacobian of x ↦ x/‖x‖ is (I − e eᵀ)/‖x‖, which maps e to 0. So the
target is taken one step earlier, on each CGD branch's output u_b = FC_b(pool_b(A)) (centred
by the head's BN when it has one) before its L2 normalisation (CGD §3.2):
y = Σ_b u_b · sg(u_b / ‖u_b‖), the projection of each branch onto its own (fixed) direction.
Its gradient says which feature-map locations make the image's descriptor stronger along the
direction it already points to, i.e. what the embedding is "made of". A is the last stage's feature map (the CGD head's input); weights
α_c = spatial mean of ∂y/∂A_c, map = ReLU(Σ_c α_c A_c), scaled to [0, 1] per image.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


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
