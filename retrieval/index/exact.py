"""Exact search over an index folder's stored embeddings: the reference an approximate index is measured against.

An IVF, PQ or HNSW index answers from coarse lists, compressed codes or a graph; what that
costs is measured against brute force over the original vectors, as FAISS's own benchmarks
and autofaiss's ``score_index`` do: the same queries through both, then
k-NN recall = |approximate top-k ∩ exact top-k| / k. The original vectors are the folder's
``embeddings.npy`` (``build_index.py --save-embeddings``), memory-mapped and scanned in
blocks by ``faiss.contrib.exhaustive_search.knn_ground_truth``, so a gallery larger than RAM
costs the time to read it, not its size in memory.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import faiss
import numpy as np
from faiss.contrib.exhaustive_search import knn_ground_truth

from ..errors import IndexFormatError
from ..metrics import sort_ties
from .folder import EMBEDDINGS_FILE

BLOCK_ROWS = 1 << 18  # gallery rows per brute-force block: 2^18 x 512-d float32 = 512 MB read at a time


def is_exact(index: faiss.Index) -> bool:
    """True for a flat (brute-force) index, whose answers are the exact ones."""
    return isinstance(faiss.downcast_index(index), faiss.IndexFlat)


def stored_embeddings(folder: str | Path, manifest: dict) -> np.ndarray | None:
    """The folder's ``embeddings.npy`` memory-mapped (row i = id i), None when it was not saved.

    IndexFormatError when its shape disagrees with the manifest (a file from another build).
    """
    path = Path(folder) / EMBEDDINGS_FILE
    if not path.is_file():
        return None
    try:
        vectors = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise IndexFormatError(f"{path}: not a readable .npy array ({err})") from None
    expected = (int(manifest["count"]), int(manifest["dim"]))
    if vectors.dtype != np.float32 or vectors.shape != expected:
        raise IndexFormatError(f"{path}: {vectors.dtype} array of shape {vectors.shape}, but the index holds "
                               f"{expected[0]} vectors of dimension {expected[1]} (float32 expected)")
    return vectors


def _blocks(vectors: np.ndarray, block_rows: int) -> Iterator[np.ndarray]:
    for start in range(0, len(vectors), block_rows):
        yield np.ascontiguousarray(vectors[start:start + block_rows], dtype=np.float32)


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int, exclude: Sequence[int] = (),
                 block_rows: int = BLOCK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by inner product over all rows of ``vectors`` except ``exclude`` (removed entries).

    vectors: (N, D), e.g. a memory-mapped ``embeddings.npy``; queries: (Nq, D). Returns
    (scores (Nq, k) float32, ids (Nq, k) int64), ties ranked by id as in ``search``; k is
    clamped to the rows left.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != vectors.shape[1]:
        raise ValueError(f"queries: expected (N, {vectors.shape[1]}), got shape {q.shape}")
    exclude = np.unique(np.asarray(exclude, dtype=np.int64))
    k = min(k, len(vectors) - len(exclude))
    if k < 1:
        raise ValueError(f"k: expected >= 1 and a gallery with live entries, got k={k}")
    wide = min(len(vectors), k + len(exclude))  # enough that k live ids survive the exclusion
    scores, ids = knn_ground_truth(
        q, _blocks(vectors, block_rows), wide, metric_type=faiss.METRIC_INNER_PRODUCT, ngpu=0)
    scores, ids = np.asarray(scores, np.float32), np.asarray(ids, np.int64)
    sort_ties(scores, ids)
    if len(exclude):
        keep = ~np.isin(ids, exclude)
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # live hits first, in rank order
        scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
    return scores[:, :k], ids[:, :k]


def knn_recall(approximate_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    """Mean over queries of |approximate top-k ∩ exact top-k| / k (1.0: the index returns the exact top-k)."""
    a, e = np.asarray(approximate_ids)[:, :k], np.asarray(exact_ids)[:, :k]
    if a.shape != e.shape or a.shape[1] < k:
        raise ValueError(f"knn_recall@{k}: expected two (Nq, >= {k}) id arrays, got {a.shape} and {e.shape}")
    found = [len(np.intersect1d(a[q][a[q] >= 0], e[q], assume_unique=True)) for q in range(len(e))]
    return float(np.mean(found)) / k
