"""k-reciprocal encoding re-ranking (Zhong, Zheng, Cao, Li, CVPR 2017), restricted to each query's candidates.

The paper, for probe p over a set of items with distances d (squared Euclidean; on unit
vectors d = 2 - 2s, as in the authors' code):

1. N(i, k): the k nearest of i, i itself first (the code's ``initial_rank[i, :k+1]``);
   R(i, k) = {j ∈ N(i, k) : i ∈ N(j, k)}, the k-reciprocal set.
2. ½-expansion: R*(p) = R(p, k1) ∪ R(q, k1/2) for every q ∈ R(p, k1) with
   |R(p, k1) ∩ R(q, k1/2)| ≥ 2/3 |R(q, k1/2)| (k1/2 rounded as the code's ``np.around``).
3. Encoding: V_p,g = exp(-d(p, g)) for g ∈ R*(p), 0 elsewhere, normalised to sum 1.
4. Local query expansion: V_p ← mean of V over p's k2 nearest (p included).
5. Jaccard distance d_J(p, g) = 1 - Σ min(V_p, V_g) / Σ max(V_p, V_g); final
   d*(p, g) = (1 - λ) d_J(p, g) + λ d(p, g).

What changes here against the paper's full N × N matrices (so memory stays bounded): for each
query the set is {p} ∪ its top-``candidates`` first-pass results (the leave-one-out self
excluded), and every neighbour list, reciprocal set and encoding above is computed inside that
set: distances to items outside it are treated as infinite, and items outside never enter the
re-ranked list. When the candidates cover the whole gallery this is the paper's computation
for one probe exactly (tests/rerank/test_kreciprocal.py); with fewer, reciprocity is judged
among the candidates only. In the query/gallery protocol the paper's code also puts the other
probes into the set; here each query is re-ranked alone, as a service must. The authors' code
also divides the distances by each column's maximum before encoding; here d = 2 - 2s is used as
it is (unit vectors bound it to [0, 4]), as the paper's formulas write it. Memory per chunk of
B queries: a few (B, M, M) arrays, M = candidates + 1.
Scores returned: 1 - d* (higher is better, as for the other methods).
"""
from __future__ import annotations

import numpy as np

from .access import GalleryAccess

_BLOCK = 1 << 21  # entries of one (B, M, M) array of a query chunk (8 MB of float32)


def _in_top(rank: np.ndarray, k: int) -> np.ndarray:
    """(B, M, M) bool: [b, i, j] = j among the first k of row i's ranking."""
    member = np.zeros(rank.shape, bool)
    np.put_along_axis(member, rank[..., :k], True, axis=-1)
    return member


def _reciprocal(rank: np.ndarray, k: int) -> np.ndarray:
    """R(i, k) as (B, M, M) bool: j ∈ N(i, k) and i ∈ N(j, k) (N with k + 1 entries, self first)."""
    member = _in_top(rank, k + 1)
    return member & member.transpose(0, 2, 1)


def encode(dist: np.ndarray, k1: int, k2: int) -> np.ndarray:
    """V (B, M, M) of every item of each set from its distances (B, M, M): steps 1-4 of the module docstring."""
    rank = np.argsort(dist, axis=-1, kind="stable")
    r1 = _reciprocal(rank, k1)
    r2 = _reciprocal(rank, int(np.around(k1 / 2)))
    r1f, r2f = r1.astype(np.float32), r2.astype(np.float32)
    overlap = r1f @ r2f.transpose(0, 2, 1)  # [b, i, q] = |R(i, k1) ∩ R(q, k1/2)|
    grow = r1 & (3 * overlap >= 2 * r2f.sum(-1)[:, None, :])  # q ∈ R(i, k1) passing the 2/3 test
    expanded = r1 | ((grow.astype(np.float32) @ r2f) > 0)
    weights = np.where(expanded, np.exp(-dist), 0).astype(np.float32)
    v = weights / weights.sum(-1, keepdims=True)
    if k2 > 1:
        v = (_in_top(rank, k2).astype(np.float32) / min(k2, v.shape[-1])) @ v
    return v


def _distances(universe: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """d = 2 - 2s within each set (B, M, D) → (B, M, M); 0 on the diagonal, inf to a missing item."""
    dist = np.maximum(2 - 2 * universe @ universe.transpose(0, 2, 1), 0)
    pair = valid[:, :, None] & valid[:, None, :]
    dist = np.where(pair, dist, np.inf)
    idx = np.arange(dist.shape[1])
    dist[:, idx, idx] = 0
    return dist


def final_distance(dist: np.ndarray, k1: int, k2: int, lam: float) -> np.ndarray:
    """d*(p, ·) (B, M) of item 0 of each set against every item (item 0 itself included)."""
    v = encode(dist, k1, k2)
    lo = np.minimum(v[:, :1, :], v).sum(-1)
    hi = np.maximum(v[:, :1, :], v).sum(-1)
    with np.errstate(invalid="ignore"):  # 0 × inf for a missing item at λ = 0; the caller drops those
        return (1 - lam) * (1 - lo / hi) + lam * dist[:, 0, :]


def kreciprocal(queries: np.ndarray, access: GalleryAccess, k: int, self_ids: np.ndarray | None = None, *,
                k1: int, k2: int, lam: float, candidates: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores 1 - d*, ids) (Nq, k): the top-``max(candidates, k)`` first-pass results re-ranked by d*."""
    first_ids = access.neighbours(queries, max(candidates, k), self_ids)[1]
    c = first_ids.shape[1]
    k = min(k, c)
    m = c + 1
    chunk = max(1, _BLOCK // (m * m))
    out_s = np.empty((len(queries), k), np.float32)
    out_i = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), chunk):
        ids = first_ids[start:start + chunk]
        q = np.asarray(queries[start:start + chunk], np.float32)
        universe = np.concatenate([q[:, None, :], access.rows(ids)], axis=1)
        valid = np.concatenate([np.ones((len(ids), 1), bool), ids >= 0], axis=1)
        # k1, k2 beyond the set take all of it, as the authors' slices (rank[:, :k1 + 1]) do
        d_star = final_distance(_distances(universe, valid), k1, k2, lam)[:, 1:]
        d_star[ids < 0] = np.inf
        order = np.argsort(d_star, axis=1, kind="stable")[:, :k]  # ties keep the first-pass order
        best = np.take_along_axis(d_star, order, 1)
        out_i[start:start + len(ids)] = np.where(np.isfinite(best), np.take_along_axis(ids, order, 1), -1)
        out_s[start:start + len(ids)] = np.where(np.isfinite(best), 1 - best, -np.inf)
    return out_s, out_i
