"""Why two images match: per-location maps of a pair's cosine score, split by CGD branch.

The score. The CGD head (models/cgd.py) makes, per branch b, y_b = A_b·pool_b(F) + c_b from
the last feature map F (C, h, w): A_b is the FC (no bias), folded with the centring BN in
eval mode when the head has one (y ↦ (y − μ)/√(σ² + ε)·γ + β is affine), and c_b is that BN's
constant part (0 without BN). Each y_b is L2-normalised to n_b, the n_b are concatenated and
the concatenation is L2-normalised by N = ‖[n_1, …, n_B]‖ (= √B unless a branch is zero).
So the cosine of two images' embeddings is exactly

    score = Σ_b share_b,   share_b = k_b ⟨y_q,b, y_r,b⟩,   k_b = 1 / (‖y_q,b‖ ‖y_r,b‖ N_q N_r),

each branch's share its own cosine divided by N_q N_r (1/B in the usual case).

SPoC (exact). pool = mean, so y = Σ_i z_i with z_i = (A F_i + c)/(h·w): the branch's constant
c is spread uniformly over the h·w locations. Then ⟨y_q, y_r⟩ = Σ_i Σ_j ⟨z_q,i, z_r,j⟩, a sum
over pairs of locations (Stylianou, Souvenir & Pless, "Visualizing Deep Similarity
Networks", WACV 2019). The query's map at i is k Σ_j ⟨z_q,i, z_r,j⟩ = k ⟨z_q,i, y_r⟩, the
result's map at j is k ⟨y_q, z_r,j⟩; each map sums to share_S up to float64 rounding.

GeM and MAC (first-order). These pools are not linear, so there is no exact split over
locations. Their maps are gradient × activation of the same share_b with respect to each
image's feature map, summed over channels (Zhu et al. 2019, "Visual Explanation for Deep
Metric Learning", arXiv:1909.12977), with the normalisers k_b held fixed: the share of a
normalised vector is scale-invariant, so without that its gradient × activation would sum
to zero (Euler), as the Grad-CAM target in viz/attention.py also explains. With k_b fixed,
and c_b spread uniformly as for SPoC, the maps still sum to share_b (GeM and MAC are
positively homogeneous of degree 1: Σ F·∂pool/∂F = pool; GeM's clamp floor ε is a constant
spread with c_b), but how the total is spread over
locations is the local linearisation: GeM weighs location i by F_i^(p−1), MAC gives each
channel's value to its arg-max. For SPoC the same recipe gives the exact map above.

All of it is computed in float64 on the CPU from the backbone's float32 feature maps, so the
maps add up to the shares to float64 rounding; ``score`` agrees with ``model(images)``'s
float32 cosine to float32 rounding.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

_EPS = 1e-12  # F.normalize's default, as the CGD head uses it


@dataclass
class PairExplanation:
    """Where the cosine of a (query, result) pair comes from.

    score: the cosine of the two embeddings. shares: descriptor letter → that branch's part
    of the score (they sum to ``score``). exact: letter → True for an exact decomposition
    (S), False for first-order (M, G). query_map / result_map: (h, w) float64 contribution of
    each location (sum over branches; each sums to ``score``); query_maps / result_maps: the
    same per branch (each sums to its share). upsampled: the maps are at the input images'
    size, per pixel (then the sums hold only up to the interpolation).
    """
    score: float
    shares: dict[str, float]
    exact: dict[str, bool]
    query_map: Tensor
    result_map: Tensor
    query_maps: dict[str, Tensor]
    result_maps: dict[str, Tensor]
    upsampled: bool = False

    @property
    def note(self) -> str:
        """E.g. "S exact, G/M first-order": what each branch's map is."""
        exact = [b for b, e in self.exact.items() if e]
        approx = [b for b, e in self.exact.items() if not e]
        parts = [f"{'/'.join(exact)} exact"] if exact else []
        return ", ".join(parts + ([f"{'/'.join(approx)} first-order"] if approx else []))

    def upsample(self, query_size: tuple[int, int], result_size: tuple[int, int]) -> PairExplanation:
        """The same explanation with every map bilinearly resized to (H, W) and scaled per pixel (× h·w / H·W)."""
        q = {b: _resize(m, query_size) for b, m in self.query_maps.items()}
        r = {b: _resize(m, result_size) for b, m in self.result_maps.items()}
        return replace(self, query_maps=q, result_maps=r, query_map=sum(q.values()), result_map=sum(r.values()),
                       upsampled=True)


def _resize(values: Tensor, size: tuple[int, int]) -> Tensor:
    h, w = values.shape
    up = F.interpolate(values[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]
    return up * (h * w) / (size[0] * size[1])


def branch_affine(head: nn.Module, b: int) -> tuple[Tensor, Tensor]:
    """(A (D, C), c (D,)) float64 with branch b's projection before L2 = A·pool + c (eval-mode BN folded in)."""
    weight = head.fcs[b].weight.detach().double().cpu()
    const = weight.new_zeros(weight.shape[0])
    if getattr(head, "bns", None) is None:
        return weight, const
    bn = head.bns[b]
    if bn.running_mean is None:
        raise ValueError("explain: the head's BatchNorm keeps no running statistics, so it is not affine in eval mode")
    scale = (bn.running_var.detach().double().cpu() + bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double().cpu()
    const = -scale * bn.running_mean.detach().double().cpu()
    if bn.bias is not None:
        const = const + bn.bias.detach().double().cpu()
    return scale[:, None] * weight, const


def _pool(kind: str, pool: nn.Module, x: Tensor) -> Tensor:
    """(C, h, w) float64 → (C,), as GlobalDescriptor computes it (which casts to float32)."""
    if kind == "S":
        return x.mean(dim=(1, 2))
    if kind == "M":
        return x.amax(dim=(1, 2))
    p = pool.p.detach().double().cpu()
    return x.clamp(min=pool.eps).pow(p).mean(dim=(1, 2)).pow(1.0 / p)


def _as_map(features: Tensor, name: str) -> Tensor:
    if features.dim() == 4 and features.shape[0] == 1:
        features = features[0]
    if features.dim() != 3:
        raise ValueError(f"{name}: expected one feature map (C, h, w) or (1, C, h, w), "
                         f"got shape {tuple(features.shape)}")
    return features.detach().double().cpu()


def explain_features(head: nn.Module, query_features: Tensor, result_features: Tensor) -> PairExplanation:
    """Explain the pair from its last feature maps (C, h, w) or (1, C, h, w) (sizes may differ).

    head: a CGDHead, used as in eval mode (BN running statistics). Maps are (h, w) per image.
    The head's parameters get no gradient.
    """
    fq, fr = _as_map(query_features, "query_features"), _as_map(result_features, "result_features")
    if fq.shape[0] != fr.shape[0] or fq.shape[0] != head.fcs[0].in_features:
        raise ValueError(f"explain: feature maps with {fq.shape[0]} and {fr.shape[0]} channels for a head that "
                         f"takes {head.fcs[0].in_features}")
    letters = head.descriptors
    with torch.inference_mode(False), torch.enable_grad():  # gradients even when the caller turned them off
        affine = [branch_affine(head, b) for b in range(len(letters))]
        fq, fr = fq.clone().requires_grad_(True), fr.clone().requires_grad_(True)
        y_q = [a @ _pool(k, pool, fq) + c for k, pool, (a, c) in zip(letters, head.pools, affine)]
        y_r = [a @ _pool(k, pool, fr) + c for k, pool, (a, c) in zip(letters, head.pools, affine)]
        norm_q = [y.detach().norm().clamp(min=_EPS) for y in y_q]
        norm_r = [y.detach().norm().clamp(min=_EPS) for y in y_r]
        big_q = torch.stack([y.detach().norm() / n for y, n in zip(y_q, norm_q)]).norm().clamp(min=_EPS)
        big_r = torch.stack([y.detach().norm() / n for y, n in zip(y_r, norm_r)]).norm().clamp(min=_EPS)
        shares, q_maps, r_maps = {}, {}, {}
        for b, letter in enumerate(letters):
            k = 1.0 / (norm_q[b] * norm_r[b] * big_q * big_r)
            shares[letter] = float(k * (y_q[b].detach() @ y_r[b].detach()))
            if letter == "S":
                q_maps[letter], r_maps[letter] = _spoc_maps(fq.detach(), fr.detach(), *affine[b], k)
            else:
                q_maps[letter], r_maps[letter] = _first_order_maps(fq, fr, y_q[b], y_r[b], k)
    return PairExplanation(score=sum(shares.values()), shares=shares, exact={b: b == "S" for b in letters},
                           query_map=sum(q_maps.values()), result_map=sum(r_maps.values()),
                           query_maps=q_maps, result_maps=r_maps)


def _spoc_maps(fq: Tensor, fr: Tensor, a: Tensor, c: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """Stylianou et al. 2019: k ⟨z_q,i, y_r⟩ and k ⟨y_q, z_r,j⟩ with z_i = (A F_i + c)/(h·w)."""
    z_q = (torch.einsum("dc,chw->dhw", a, fq) + c[:, None, None]) / (fq.shape[1] * fq.shape[2])
    z_r = (torch.einsum("dc,chw->dhw", a, fr) + c[:, None, None]) / (fr.shape[1] * fr.shape[2])
    y_q, y_r = z_q.sum(dim=(1, 2)), z_r.sum(dim=(1, 2))
    return k * torch.einsum("dhw,d->hw", z_q, y_r), k * torch.einsum("d,dhw->hw", y_q, z_r)


def _first_order_maps(fq: Tensor, fr: Tensor, y_q: Tensor, y_r: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """Zhu et al. 2019: Σ_channels F·∂share/∂F per image (k fixed), plus the constant part spread uniformly.

    The constant part is share − Σ F·∂share/∂F: k⟨c, y_other⟩ from the BN (Euler's theorem
    for the degree-1 pools), plus the part of GeM's clamp floor (ε = 1e-6 on all-zero
    channels, ~1e-8 of the score), which does not depend on F either.
    """
    share = k * (y_q @ y_r)
    grad_q, grad_r = torch.autograd.grad(share, (fq, fr))
    maps = []
    for f, grad in ((fq, grad_q), (fr, grad_r)):
        local = (grad * f.detach()).sum(0)
        maps.append(local + (share.detach() - local.sum()) / local.numel())
    return maps[0], maps[1]


def _as_batch(image: Tensor, name: str) -> Tensor:
    if not isinstance(image, Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor (3, H, W), got {type(image).__name__}")
    return image[None] if image.dim() == 3 else image


def explain_pair(model: nn.Module, query: Tensor, result: Tensor, upsample: bool = False) -> PairExplanation:
    """Explain the cosine of ``model(query)`` and ``model(result)`` (see the module docstring).

    model: a RetrievalNet (any attention, any descriptor string, with or without
    embedding_bn); query, result: one normalised image each, (3, H, W) or (1, 3, H, W), as the
    test transform makes them (sizes may differ). The backbone runs in eval mode without
    gradients; every module's train/eval state is restored and no parameter is changed or
    gets a gradient. Maps are (h, w) at the feature-map resolution, or (H, W) of each image
    with ``upsample``. Returns a PairExplanation (float64 maps on the CPU).
    """
    query, result = _as_batch(query, "query"), _as_batch(result, "result")
    for name, image in (("query", query), ("result", result)):
        if image.shape[0] != 1:
            raise ValueError(f"{name}: expected one image (3, H, W), got a batch of shape {tuple(image.shape)}")
        model.check_images(image)
    device = next(model.parameters()).device
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        # float32 as model(images) runs it, also under a caller's autocast or inference_mode
        with torch.inference_mode(False), torch.no_grad(), torch.autocast(device.type, enabled=False):
            fq = model.backbone(query.to(device, torch.float32))
            fr = model.backbone(result.to(device, torch.float32))
        explanation = explain_features(model.head, fq, fr)
    finally:
        for module, mode in modes.items():
            module.training = mode
    if upsample:
        explanation = explanation.upsample(tuple(query.shape[-2:]), tuple(result.shape[-2:]))
    return explanation
