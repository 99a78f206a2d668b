"""Shared check of the index tests: two indexes answer the same queries identically."""
import numpy as np

from retrieval.index import search, set_search_params


def assert_same_search(a, b, queries: np.ndarray, nprobes=(1, 2), k: int = 10) -> None:
    """Identical top-k ids (and scores to 1e-6) of indexes ``a`` and ``b`` at every nprobe."""
    for nprobe in nprobes:
        set_search_params(a, nprobe=nprobe)
        set_search_params(b, nprobe=nprobe)
        (sa, ia), (sb, ib) = search(a, queries, k), search(b, queries, k)
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_allclose(sa, sb, atol=1e-6)
