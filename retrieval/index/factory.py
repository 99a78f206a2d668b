"""FAISS factory strings: parsing, training-size checks, building, search-time knobs."""
from __future__ import annotations

import logging
import math

import faiss
import numpy as np

from ..errors import ConfigError, DataError

log = logging.getLogger(__name__)

# k-means wants at least this many training points per centroid; below it FAISS warns and the
# centroids are poor (faiss/Clustering.h, ClusteringParameters::min_points_per_centroid = 39).
MIN_POINTS_PER_CENTROID = 39


def _training_needs(index: faiss.Index) -> list[tuple[str, int]]:
    """(what, training vectors needed) for each k-means inside ``index`` (IVF lists, PQ codebooks)."""
    needs = []
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        needs.append((f"{ivf.nlist} IVF lists", MIN_POINTS_PER_CENTROID * ivf.nlist))
        inner = faiss.downcast_index(ivf)
    else:
        inner = faiss.downcast_index(index.index if isinstance(index, faiss.IndexPreTransform) else index)
    pq = getattr(inner, "pq", None)
    if pq is not None:
        needs.append((f"{pq.ksub} centroids per PQ sub-quantizer", MIN_POINTS_PER_CENTROID * pq.ksub))
    return needs


def _suggest_nlist(n: int) -> int:
    return 2 ** max(0, int(math.log2(max(1, n // MIN_POINTS_PER_CENTROID))))


def parse_factory(factory: str, dim: int) -> faiss.Index:
    """The empty, untrained index of a FAISS factory string (ConfigError naming --index-type when unparsable)."""
    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1].split(": ", 1)[-1] if str(err).strip() else ""
        raise ConfigError(f"--index-type '{factory}': not a FAISS factory string for dimension {dim} ({reason}); "
                          "examples: Flat, IVF1024,Flat, HNSW32, IVF4096,PQ64") from None


def _check_training_size(index: faiss.Index, factory: str, n: int) -> None:
    for what, need in _training_needs(index):
        if n < need:
            hint = f"IVF{_suggest_nlist(n)},Flat" if "IVF" in what else "IVF...,Flat"
            raise DataError(
                f"--index-type '{factory}' needs at least {need:,} gallery vectors to train its {what} "
                f"({MIN_POINTS_PER_CENTROID} per centroid); the gallery has {n:,}. Use fewer lists "
                f"(e.g. {hint}) or Flat (exact search, no training)")


def check_factory(factory: str, dim: int, count: int) -> None:
    """Fail early (before embedding a gallery) when ``factory`` cannot be parsed or trained on ``count`` vectors."""
    index = parse_factory(factory, dim)
    if not index.is_trained:
        _check_training_size(index, factory, count)


def create_index(factory: str, train_vectors: np.ndarray) -> faiss.Index:
    """An empty inner-product index from a FAISS factory string, trained on ``train_vectors`` (N, dim) when needed.

    Raises ConfigError for a string FAISS cannot parse and DataError when the gallery is too
    small to train it (naming the factory and how many vectors it needs).
    """
    index = parse_factory(factory, train_vectors.shape[1])
    if not index.is_trained:
        n = len(train_vectors)
        _check_training_size(index, factory, n)
        log.info("training %s on %d vectors", factory, n)
        try:
            index.train(train_vectors)
        except RuntimeError as err:
            raise DataError(f"--index-type '{factory}': FAISS could not train it on {n} vectors: {err}") from None
    return index


def set_search_params(index: faiss.Index, nprobe: int | None = None, ef_search: int | None = None) -> None:
    """Speed/accuracy knobs: IVF lists visited (``nprobe``), HNSW candidate list (``ef_search``)."""
    params = faiss.ParameterSpace()
    if nprobe is not None and faiss.try_extract_index_ivf(index) is not None:
        params.set_index_parameter(index, "nprobe", int(nprobe))
    if ef_search is not None and "HNSW" in type(faiss.downcast_index(index)).__name__:
        params.set_index_parameter(index, "efSearch", int(ef_search))
