"""What an embedding space looks like beyond Recall@K: its spread, its scores, its compressibility.

- ``mean_norm``: the norm of the mean embedding. Unit vectors spread over the sphere have a
  mean near 0; a cone around one shared direction has a mean near 1, and then every cosine
  is ≈ 1 whatever the classes, and product quantisation (which codes each sub-vector
  against a codebook) spends its codes on the shared direction.
- ``pair_scores``: cosine scores of same-class and different-class pairs (what a person
  reads as "how similar"), sampled so the cost stays bounded.
- ``compressed_recall``: leave-one-out Recall@1 of a FAISS index built from a factory
  string (e.g. ``PQ16``) on the vectors themselves, beside exact search.
Arrays in, numbers out: nothing here knows of models.
"""
from __future__ import annotations

import logging

import faiss
import numpy as np

from .vectors import check_embeddings

log = logging.getLogger(__name__)


def mean_norm(embeddings: np.ndarray) -> float:
    """‖mean of the rows‖ of (N, D) L2-normalised embeddings: 0 = spread over the sphere, 1 = all equal."""
    x = check_embeddings(embeddings)
    return float(np.linalg.norm(x.mean(axis=0, dtype=np.float64)))


def pair_scores(embeddings: np.ndarray, labels: np.ndarray, max_pairs: int = 200_000,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(same-class cosines, different-class cosines), each over at most ``max_pairs`` pairs of distinct rows.

    embeddings: (N, D) L2-normalised; labels: (N,) int. Same-class pairs are enumerated (there are
    Σ n_c (n_c - 1) / 2 of them) and sampled down when there are more; different-class pairs are
    drawn at random, so the cost stays bounded for any N.
    """
    x = check_embeddings(embeddings)
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        i, j = np.triu_indices(len(members), k=1)
        parts.append(np.stack([members[i], members[j]], axis=1))
    same = np.concatenate(parts) if parts else np.empty((0, 2), np.int64)
    if len(same) > max_pairs:
        same = same[rng.choice(len(same), max_pairs, replace=False)]
    draws = rng.integers(0, len(x), size=(2 * max_pairs, 2))
    diff = draws[y[draws[:, 0]] != y[draws[:, 1]]][:max_pairs]

    def cosines(pairs: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", x[pairs[:, 0]], x[pairs[:, 1]]).astype(np.float32)
    return cosines(same), cosines(diff)


def compressed_recall(embeddings: np.ndarray, labels: np.ndarray, factory: str) -> float:
    """Leave-one-out Recall@1 through a FAISS ``factory`` index trained on and holding ``embeddings`` (N, D).

    A test split has fewer than FAISS's recommended 39 × 256 training vectors per codebook (its
    warning is turned off here); the codebooks are then fitted to the very vectors they code,
    which flatters neither of two embedding spaces compared this way over the other.
    """
    x = check_embeddings(embeddings)
    y = np.asarray(labels)
    index = faiss.index_factory(x.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    inner = faiss.downcast_index(index)
    if hasattr(inner, "pq"):  # a test split is far below FAISS's 39 points per centroid: known, not worth 16 warnings
        inner.pq.cp.min_points_per_centroid = 1
    if not index.is_trained:
        try:
            index.train(x)
        except RuntimeError as err:  # e.g. a PQ codebook of 256 centroids from fewer than 256 vectors
            raise ValueError(f"{factory}: cannot be trained on {len(x)} vectors ({str(err).splitlines()[-1]})") \
                from None
    index.add(x)
    _, ids = index.search(x, 2)
    own = np.arange(len(x))
    nearest = np.where(ids[:, 0] == own, ids[:, 1], ids[:, 0])
    found = nearest >= 0
    return float(np.mean(found & (y[np.where(found, nearest, 0)] == y)))


def describe(embeddings: np.ndarray, labels: np.ndarray, factories: tuple[str, ...] = ("PQ16",)) -> dict[str, float]:
    """mean_norm, exact and per-factory leave-one-out Recall@1 (keys ``pq16_recall@1``, ...), mean pair cosines.

    A factory that cannot be trained on this few vectors gets NaN and a warning.
    """
    same, diff = pair_scores(embeddings, labels)
    out = {"mean_norm": mean_norm(embeddings), "exact_recall@1": compressed_recall(embeddings, labels, "Flat")}
    for factory in factories:
        try:
            value = compressed_recall(embeddings, labels, factory)
        except ValueError as err:
            log.warning("%s", err)
            value = float("nan")
        out[f"{factory.lower().replace(',', '_')}_recall@1"] = value
    out.update(cos_same=float(same.mean()) if len(same) else float("nan"),
               cos_diff=float(diff.mean()) if len(diff) else float("nan"))
    return out
