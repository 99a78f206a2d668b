"""Approximate search that finds fewer than k items: id -1 and score -inf in ``search``, dropped from query.py's output.

An IVF index visiting one list (nprobe=1) can only return that list's members; the reference
is brute force over exactly those members, found from the index's own coarse quantizer.
"""
import io

import faiss
import numpy as np
import pandas as pd
import pytest

from retrieval.cli import build_index, query
from retrieval.index import factory, set_search_params
from retrieval.index.search import search

DIM, NLIST = 8, 4


def _clustered(rng, per_cluster=(5, 3, 4, 2)):
    """Unit vectors around NLIST far-apart centres; vectors 0 and 1 are identical (a tie)."""
    centres = np.eye(DIM, dtype=np.float32)[:NLIST] * 5
    x = np.concatenate([c + rng.normal(0, 0.3, (n, DIM)) for c, n in zip(centres, per_cluster)]).astype(np.float32)
    x[1] = x[0]
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _probed_members(index, x, q):
    """Per query: the ids of the database vectors in the one list nprobe=1 visits."""
    ivf = faiss.extract_index_ivf(index)
    _, db_list = ivf.quantizer.search(x, 1)
    _, q_list = ivf.quantizer.search(q, 1)
    return [np.flatnonzero(db_list[:, 0] == q_list[i, 0]) for i in range(len(q))]


@pytest.fixture()
def ivf():
    rng = np.random.default_rng(0)
    x = _clustered(rng)
    index = faiss.index_factory(DIM, f"IVF{NLIST},Flat", faiss.METRIC_INNER_PRODUCT)
    index.cp.min_points_per_centroid = 1  # 14 training vectors for 4 lists: keep FAISS quiet
    index.train(x)
    index.add(x)
    return index, x, rng


def test_missing_hits_have_id_minus_one_and_score_minus_inf(ivf):
    index, x, rng = ivf
    q = np.concatenate([x[[0, 7]], x[[10, 13]] + rng.normal(0, 0.05, (2, DIM)).astype(np.float32)])
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    set_search_params(index, nprobe=1)
    k = len(x)
    scores, ids = search(index, q, k)
    assert scores.shape == ids.shape == (len(q), k) and scores.dtype == np.float32 and ids.dtype == np.int64
    members = _probed_members(index, x, q)
    assert all(0 < len(m) < k for m in members)  # every query misses some items: the case under test
    for i, m in enumerate(members):
        sims = x[m].astype(np.float64) @ q[i].astype(np.float64)
        order = m[np.lexsort((m, -np.round(sims, 5)))]  # brute force over the probed list, ties by id
        n = len(m)
        assert ids[i, :n].tolist() == order.tolist(), i
        np.testing.assert_allclose(scores[i, :n], np.sort(sims)[::-1], atol=1e-5)
        assert (ids[i, n:] == -1).all() and np.isneginf(scores[i, n:]).all()
    assert ids[0, :2].tolist() == [0, 1]  # the identical pair, tie broken by the lower id, before the misses


def test_visiting_every_list_misses_nothing(ivf):
    index, x, _ = ivf
    set_search_params(index, nprobe=NLIST)
    scores, ids = search(index, x[[3, 9]], len(x))
    assert (ids >= 0).all() and np.isfinite(scores).all()
    assert sorted(ids[0].tolist()) == list(range(len(x)))


def test_query_output_drops_the_misses(assets, tmp_path, capsys, monkeypatch):
    # 9 gallery images are far too few to train IVF lists well, but enough to make lists that miss
    monkeypatch.setattr(factory, "MIN_POINTS_PER_CENTROID", 1)
    fast = ["--workers", "0", "--precision", "fp32", "--batch-size", "16", "-q"]
    out = tmp_path / "ivf"
    assert build_index.main(["--checkpoint", str(assets["ckpt"]), "--out", str(out), "--csv", str(assets["csv"]),
                             "--index-type", "IVF3,Flat", "--save-embeddings", *fast]) == 0
    capsys.readouterr()
    code = query.main(["--checkpoint", str(assets["ckpt"]), "--index", str(out), "-k", "9", "--nprobe", "1",
                       "--format", "csv", *[str(p) for p in assets["paths"]], *fast])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    table = pd.read_csv(io.StringIO(stdout), keep_default_na=False)
    # the reference: each query's own probed list, from the stored embeddings and the index's quantizer
    index = faiss.read_index(str(out / "index.faiss"))
    x = np.load(out / "embeddings.npy")
    members = _probed_members(index, x, x)
    assert sum(len(m) for m in members) < 9 * 9  # some queries get fewer than k results
    meta = pd.read_csv(out / "metadata.csv", keep_default_na=False)
    for i, path in enumerate(assets["paths"]):
        rows = table[table["query"] == str(path)]
        assert rows["rank"].tolist() == list(range(1, len(members[i]) + 1)), path
        assert sorted(rows["gallery_id"].tolist()) == members[i].tolist()
        assert (rows["gallery_id"] >= 0).all() and np.isfinite(rows["score"]).all()
        assert rows["gallery_path"].tolist() == meta["path"].iloc[rows["gallery_id"]].tolist()
        assert rows["gallery_path"].iloc[0] == str(path)  # each query still finds itself first
