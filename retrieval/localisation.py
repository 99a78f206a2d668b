"""Does a map point at the object? Pointing game, energy inside the object, and a centre-prior floor.

Pure: maps and masks are arrays (a map is any non-negative-where-it-matters (H, W) score,
a mask a boolean (H, W) of the object); nothing here knows of models or images on disk.

* Pointing game (Zhang et al., ECCV 2016, "Top-down Neural Attention by Excitation
  Backprop", §4.1): a hit when the map's maximum lies on the object, with a tolerance of
  15 px at 224 px input (scaled here to the map's size), i.e. inside the mask dilated by it.
  A map whose maximum is attained at several pixels (a flat gate, a tie) scores the share of
  those pixels that hit: the expected hit under a random choice among them, so a constant
  map scores the dilated object's share of the image instead of whatever pixel comes first.
* Energy inside the object (Wang et al., CVPR-W 2020, "Score-CAM", §5.2 "energy-based
  pointing game"): the share of the map's positive mass that falls inside the mask.
* Centre prior: a Gaussian at the image centre. Photographers centre objects (and CUB /
  Cars boxes are mostly central), so "looks at the middle" already scores well; a map has to
  beat this floor before its score says anything about the network.

Images without object pixels (a mask fully occluded, no annotation) score NaN and are left
out of the means; ``summarise`` reports how many counted.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

TOLERANCE_PX = 15  # Zhang et al. 2016, §4.1: 15 pixels ...
TOLERANCE_AT = 224  # ... at a 224-pixel input
FULL_IMAGE_BOX = 0.95  # boxes covering this share of their image (on average) localise nothing


def _check(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    maps, masks = np.asarray(maps, dtype=np.float64), np.asarray(masks)
    if maps.ndim == 2:
        maps, masks = maps[None], masks[None]
    if maps.ndim != 3 or maps.shape != masks.shape:
        raise ValueError(f"localisation: expected maps and masks of the same shape (N, H, W), got "
                         f"{maps.shape} and {masks.shape}")
    return maps, masks.astype(bool)


def tolerance(height: int, width: int) -> float:
    """The pointing-game tolerance in pixels for an (height, width) map: 15 px at 224, scaled."""
    return TOLERANCE_PX * min(height, width) / TOLERANCE_AT


def pointing_game(maps: np.ndarray, masks: np.ndarray, tol: float | None = None) -> np.ndarray:
    """Hits (N,) float in [0, 1] (NaN where a mask is empty) of maps (N, H, W) against masks (N, H, W).

    tol: tolerance in pixels (default ``tolerance(H, W)``); a hit is a maximum within ``tol``
    (Euclidean) of an object pixel. Ties: the share of the maximal pixels that hit.
    """
    maps, masks = _check(maps, masks)
    tol = tolerance(*maps.shape[1:]) if tol is None else tol
    hits = np.full(len(maps), np.nan)
    for i, (m, mask) in enumerate(zip(maps, masks)):
        if not mask.any():
            continue
        near = ndimage.distance_transform_edt(~mask) <= tol  # the mask dilated by tol
        peaks = m == m.max()
        hits[i] = near[peaks].mean()
    return hits


def energy_inside(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Share (N,) of each map's positive mass inside its mask: Σ max(m, 0)·mask / Σ max(m, 0) (NaN: empty)."""
    maps, masks = _check(maps, masks)
    positive = np.clip(maps, 0, None)
    total = positive.sum(axis=(1, 2))
    inside = (positive * masks).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        share = inside / total
    share[(total <= 0) | ~masks.any(axis=(1, 2))] = np.nan
    return share


def centre_prior(height: int, width: int, sigma: float = 0.25) -> np.ndarray:
    """A Gaussian (height, width) at the image centre, std ``sigma`` × the side, peak 1 (the floor map)."""
    ys = (np.arange(height) + 0.5 - height / 2) / (sigma * height)
    xs = (np.arange(width) + 0.5 - width / 2) / (sigma * width)
    return np.exp(-0.5 * (ys[:, None] ** 2 + xs[None, :] ** 2))


def box_mask(box: np.ndarray, height: int, width: int, scale_x: float = 1.0, scale_y: float = 1.0) -> np.ndarray:
    """Boolean (height, width) mask of a box (x1, y1, x2, y2), PIL convention, scaled by (scale_x, scale_y).

    A pixel is inside when its centre is. A box with a NaN coordinate gives an empty mask.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    if any(math.isnan(v) for v in (x1, y1, x2, y2)):
        return np.zeros((height, width), dtype=bool)
    xs, ys = np.arange(width) + 0.5, np.arange(height) + 0.5
    inside_x = (xs >= x1 * scale_x) & (xs < x2 * scale_x)
    inside_y = (ys >= y1 * scale_y) & (ys < y2 * scale_y)
    return inside_y[:, None] & inside_x[None, :]


def box_coverage(boxes: np.ndarray, sizes: np.ndarray) -> float:
    """Mean share of its image (sizes (N, 2) as width, height) that each box (N, 4) covers; NaN boxes skipped."""
    boxes, sizes = np.asarray(boxes, dtype=np.float64), np.asarray(sizes, dtype=np.float64)
    known = ~np.isnan(boxes).any(axis=1)
    if not known.any():
        return float("nan")
    b, s = boxes[known], sizes[known]
    w = np.clip(np.minimum(b[:, 2], s[:, 0]) - np.maximum(b[:, 0], 0), 0, None)
    h = np.clip(np.minimum(b[:, 3], s[:, 1]) - np.maximum(b[:, 1], 0), 0, None)
    return float(np.mean(w * h / (s[:, 0] * s[:, 1])))


def summarise(hits: np.ndarray, energy: np.ndarray) -> dict[str, float]:
    """{pointing_game, energy, images}: the means over the images that have an object, and their count."""
    counted = ~np.isnan(hits)
    if not counted.any():
        return {"pointing_game": float("nan"), "energy": float("nan"), "images": 0}
    return {"pointing_game": float(np.nanmean(hits)), "energy": float(np.nanmean(energy)),
            "images": int(counted.sum())}
