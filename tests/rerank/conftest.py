"""~200 clustered unit vectors with labels: the data every re-ranking test compares methods on."""
import numpy as np
import pytest


def clustered(n=200, dim=16, classes=10, noise=0.9, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    labels = rng.integers(0, classes, n)
    x = centres[labels] + noise * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


@pytest.fixture(scope="module")
def points():
    return clustered()


def top(sim: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force (scores, ids) of a full similarity matrix: descending, ties by lower id."""
    ids = np.lexsort((np.broadcast_to(np.arange(sim.shape[1]), sim.shape), -sim), axis=1)[:, :k]
    return np.take_along_axis(sim, ids, 1), ids
