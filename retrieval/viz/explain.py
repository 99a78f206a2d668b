"""Why two images match: the pair explanation (retrieval/explain.py) drawn over both images.

Each image carries its map as a heat map on one shared, symmetric scale (red adds to the
cosine, blue takes away; per pixel, so the colours of both images compare), a colour bar,
and a title with the score split by branch and what each branch's map is (SPoC exact,
GeM/MAC first-order).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..explain import PairExplanation, explain_pair
from ..schema import Config
from .attention import _load
from .plots import pyplot, save_figure


def split_text(explanation: PairExplanation) -> str:
    """E.g. "cosine 0.812 = S 0.401 + G 0.411": the score and its split by branch."""
    parts = " + ".join(f"{b} {v:.3f}" for b, v in explanation.shares.items()).replace("+ -", "− ")
    return f"cosine {explanation.score:.3f} = {parts}"


def explanation_figure(explanation: PairExplanation, query_picture: np.ndarray, result_picture: np.ndarray,
                       out_png: str | Path, names: tuple[str, str] = ("query", "result"), alpha: float = 0.6) -> Path:
    """Draw the two pictures (H, W, 3) uint8 with the explanation's maps over them; returns ``out_png``.

    The maps are resized to each picture (per pixel), so the pictures must show what the
    network saw (the test transform's square resize).
    """
    plt = pyplot()
    sized = explanation.upsample(query_picture.shape[:2], result_picture.shape[:2])
    maps = [sized.query_map.float().numpy(), sized.result_map.float().numpy()]
    vmax = max(float(np.abs(m).max()) for m in maps) or 1.0
    fig, axes = plt.subplots(1, 2, figsize=(7.6, 3.8), layout="constrained")
    for ax, picture, values, name, raw in zip(axes, (query_picture, result_picture), maps, names,
                                              (explanation.query_map, explanation.result_map)):
        ax.imshow(picture.mean(axis=2), cmap="gray", vmin=0, vmax=255)  # grey, so the heat map's colours read
        shown = ax.imshow(values, cmap="RdBu_r", vmin=-vmax, vmax=vmax, alpha=alpha)
        ax.set_title(f"{name[:32]}\nmap {raw.shape[0]}×{raw.shape[1]}, sums to {float(raw.sum()):.3f}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    bar = fig.colorbar(shown, ax=list(axes), shrink=0.85)
    bar.set_label("contribution to the cosine per pixel\n(red adds, blue takes away)", fontsize=8)
    fig.suptitle(f"Why these two match: {split_text(explanation)}\n({explanation.note}: SPoC split over "
                 "location pairs, GeM/MAC gradient × activation)", fontsize=9)
    return save_figure(fig, out_png)


def explain_figure(model: torch.nn.Module, query_path: str | Path, result_path: str | Path, cfg: Config,
                   out_png: str | Path, display: int = 224) -> PairExplanation:
    """Explain why ``model`` matches the two image files and draw it to ``out_png``; returns the explanation.

    model: a RetrievalNet; cfg: its config (the test transform's image size); display: side
    in pixels of each picture.
    """
    pyplot()  # fail on a missing matplotlib before any compute
    images, shown = _load([query_path, result_path], cfg, display)
    explanation = explain_pair(model, images[0], images[1])
    explanation_figure(explanation, shown[0], shown[1], out_png, (Path(query_path).name, Path(result_path).name))
    return explanation
