"""The localisation score of a model on a data set with object masks or boxes (DESIGN.md "Attention").

For each image (a deterministic, evenly spread subset when ``limit`` is set), in batches so
memory stays bounded: the Grad-CAM of the embedding (``models.gradcam``), each attention
gate the model has (CBAM's spatial gate per stage, BAM's average gate after stages 1–3) and
the centre prior are upsampled to the network input (the image resized square, as the test
transform does) and scored against the object there (``localisation``): its mask (the
synthetic data's ``mask`` column), else its bounding box (CUB, Cars).
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .data.dataset import ImageDataset
from .errors import DataError
from .localisation import FULL_IMAGE_BOX, box_coverage, box_mask, centre_prior, energy_inside, pointing_game, summarise
from .models.gradcam import grad_cam
from .progress import progress

log = logging.getLogger(__name__)

GRAD_CAM = "where the embedding looks (Grad-CAM)"
CENTRE_PRIOR = "centre prior (Gaussian at the centre)"


def _has_masks(dataset: ImageDataset) -> bool:
    return "mask" in dataset.records.columns and bool((dataset.records["mask"].fillna("") != "").any())


def _image_sizes(dataset: ImageDataset, indices: np.ndarray) -> np.ndarray:
    """(N, 2) width, height of the images (headers only)."""
    sizes = []
    for i in indices:
        with Image.open(dataset.paths[i]) as image:
            sizes.append(image.size)
    return np.asarray(sizes, dtype=np.float64)


def select(n: int, limit: int | None) -> np.ndarray:
    """Indices of at most ``limit`` of ``n`` images, evenly spread (every class of a sorted split is seen)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))


def skip_reason(dataset: ImageDataset, indices: np.ndarray) -> str | None:
    """Why ``dataset`` cannot be scored (no masks or boxes, crops, whole-image boxes), or None."""
    if getattr(dataset, "crop", False):
        return "data.crop is on: every image is cropped to its box, so the box is the whole image"
    if _has_masks(dataset):
        return None
    boxes = dataset.records[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64)[indices]
    if np.isnan(boxes).any(axis=1).all():
        return "the data set has no object masks or bounding boxes"
    sample = indices[:: max(1, len(indices) // 200)]  # a few hundred headers tell the coverage
    coverage = box_coverage(dataset.records[["x1", "y1", "x2", "y2"]].to_numpy(np.float64)[sample],
                            _image_sizes(dataset, sample))
    if coverage >= FULL_IMAGE_BOX:
        return (f"its bounding boxes cover {100 * coverage:.0f} % of their images on average (as in CUB_mini), "
                "so they say nothing about where the object is")
    return None


def target_masks(dataset: ImageDataset, indices: np.ndarray, size: int) -> np.ndarray:
    """Boolean (B, size, size) object masks of the images at the network input (square resize)."""
    masks = np.zeros((len(indices), size, size), dtype=bool)
    paths = dataset.records["mask"].fillna("").tolist() if "mask" in dataset.records.columns else None
    for k, i in enumerate(indices):
        if paths is not None and paths[i]:
            with Image.open(paths[i]) as mask:
                masks[k] = np.asarray(mask.convert("L").resize((size, size), Image.NEAREST)) > 0
            continue
        box = dataset.records.loc[i, ["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64)
        if not np.isnan(box).any():
            width, height = _image_sizes(dataset, np.array([i]))[0]
            masks[k] = box_mask(box, size, size, scale_x=size / width, scale_y=size / height)
    return masks


def _upsample(maps: torch.Tensor, size: int) -> np.ndarray:
    """(B, h, w) or (B, 1, h, w) → (B, size, size) float64, bilinear (as the pictures draw them)."""
    maps = maps if maps.dim() == 4 else maps[:, None]
    return F.interpolate(maps.float().cpu(), size=(size, size), mode="bilinear",
                         align_corners=False)[:, 0].double().numpy()


def _maps(model: torch.nn.Module, images: torch.Tensor, gates: list[str], size: int) -> dict[str, np.ndarray]:
    out = {GRAD_CAM: _upsample(grad_cam(model, images), size)}
    if gates:
        device = next(model.parameters()).device
        with torch.no_grad():
            stage_maps = model.attention_maps(images.to(device))
        out.update({f"{label} gate": _upsample(m, size) for label, m in zip(gates, stage_maps)})
    return out


def score_localisation(model: torch.nn.Module, dataset: ImageDataset, image_size: int, batch_size: int = 32,
                       limit: int | None = None, show_progress: bool = False) -> dict[str, dict[str, float]]:
    """{method: {pointing_game, energy, images}} of a RetrievalNet on ``dataset`` (test transform set).

    Methods: Grad-CAM of the embedding, each attention gate of the model, the centre prior.
    DataError when the data set has no usable masks or boxes (``skip_reason``).
    """
    indices = select(len(dataset), limit)
    reason = skip_reason(dataset, indices)
    if reason is not None:
        raise DataError(f"localisation: cannot score this data set: {reason}")
    gates = [label for label, _ in model.gate_modules()]
    prior = centre_prior(image_size, image_size)
    hits: dict[str, list[np.ndarray]] = {}
    energy: dict[str, list[np.ndarray]] = {}
    was_training = model.training
    model.eval()
    try:
        for start in progress(range(0, len(indices), batch_size), desc="localisation", unit="batch",
                              disable=not show_progress):
            batch = indices[start:start + batch_size]
            images = torch.stack([dataset[int(i)][0] for i in batch])
            masks = target_masks(dataset, batch, image_size)
            maps = _maps(model, images, gates, image_size)
            maps[CENTRE_PRIOR] = np.broadcast_to(prior, masks.shape)
            for name, m in maps.items():
                hits.setdefault(name, []).append(pointing_game(m, masks))
                energy.setdefault(name, []).append(energy_inside(m, masks))
    finally:
        model.train(was_training)
    scores = {name: summarise(np.concatenate(hits[name]), np.concatenate(energy[name])) for name in hits}
    log.info("localisation on %d images: %s", len(indices),
             ", ".join(f"{k}: {v['pointing_game']:.3f}/{v['energy']:.3f}" for k, v in scores.items()))
    return scores


def format_table(runs: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown table: method | pointing game | energy inside, one pair of columns per run (name → scores)."""
    named = [f"{name}: " if name else "" for name in runs]
    rows = ["| method | " + " | ".join(f"{n}pointing game | {n}energy inside" for n in named) + " |",
            "| --- |" + " --- | --- |" * len(runs)]
    for method in dict.fromkeys(m for scores in runs.values() for m in scores):
        cells = []
        for scores in runs.values():
            s = scores.get(method)
            cells += ["n/a", "n/a"] if s is None else [f"{s['pointing_game']:.3f}", f"{s['energy']:.3f}"]
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
