"""Score distributions: cosine scores of same-class vs different-class pairs (matplotlib, optional).

The picture a person needs to read a score: if the two histograms overlap little, a score
says "same kind of thing" or not; if both sit at 0.999 (a cone), no score means anything.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..embedding_space import mean_norm, pair_scores
from .plots import pyplot, save_figure


def _overlap(same: np.ndarray, diff: np.ndarray, bins: np.ndarray) -> float:
    """Shared area of the two normalised histograms (0 = separated, 1 = identical)."""
    a, _ = np.histogram(same, bins=bins)
    b, _ = np.histogram(diff, bins=bins)
    return float(np.minimum(a / max(1, a.sum()), b / max(1, b.sum())).sum())


def score_figure(embeddings: np.ndarray, labels: np.ndarray, out_png: str | Path, title: str = "",
                 max_pairs: int = 200_000) -> dict:
    """Draw the same-class / different-class cosine histograms of ``embeddings`` (N, D); returns the summary.

    Summary: pair counts, means, the histograms' overlap, the mean-embedding norm; the
    caption repeats them so the picture stands alone.
    """
    same, diff = pair_scores(embeddings, labels, max_pairs=max_pairs)
    bins = np.linspace(-1.0, 1.0, 101)
    summary = {"same_pairs": int(len(same)), "diff_pairs": int(len(diff)),
               "same_mean": float(same.mean()) if len(same) else float("nan"),
               "diff_mean": float(diff.mean()) if len(diff) else float("nan"),
               "overlap": _overlap(same, diff, bins), "mean_norm": mean_norm(embeddings)}
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.hist(diff, bins=bins, density=True, alpha=0.55, color="C3",
            label=f"different class ({len(diff):,} pairs, mean {summary['diff_mean']:.3f})")
    ax.hist(same, bins=bins, density=True, alpha=0.55, color="C2",
            label=f"same class ({len(same):,} pairs, mean {summary['same_mean']:.3f})")
    ax.set_xlabel("cosine score")
    ax.set_ylabel("density")
    ax.set_xlim(-1, 1)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title((title + "\n" if title else "") + f"overlap {summary['overlap']:.2f}, "
                 f"norm of the mean embedding {summary['mean_norm']:.3f}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out_png)
    return summary
