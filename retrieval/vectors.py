"""The one rule for embedding arrays the library accepts (metrics, indexes, shards)."""
from __future__ import annotations

import numpy as np

# Rows are checked in blocks so a 10M-row memory-mapped array never needs an N×D temporary.
_BLOCK = 1 << 16
# bf16 autocast moves norms by ~1e-3 before the final re-normalisation; more means "not normalised".
NORM_TOLERANCE = 1e-3


def check_embeddings(x, name: str = "embeddings") -> np.ndarray:
    """``x`` as a C-contiguous float32 (N, D) array; ValueError naming ``name`` unless every row is finite and unit-norm.

    Inner product equals cosine only on L2-normalised rows, which every index and metric here assumes.
    """
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty (N, D) array of embeddings, got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    low, high = np.inf, -np.inf
    for start in range(0, len(x), _BLOCK):
        norms = np.linalg.norm(x[start:start + _BLOCK], axis=1)
        if not np.all(np.isfinite(norms)):
            row = start + int(np.flatnonzero(~np.isfinite(norms))[0])
            raise ValueError(f"{name}: embeddings contain NaN or inf (row {row})")
        low, high = min(low, float(norms.min())), max(high, float(norms.max()))
    if high - 1 > NORM_TOLERANCE or 1 - low > NORM_TOLERANCE:
        raise ValueError(f"{name}: expected L2-normalised rows (inner product = cosine); "
                         f"norms range {low:.4g}..{high:.4g}")
    return x
