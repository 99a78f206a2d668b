"""build_index under torchrun (2 gloo ranks on CPU) equals the single-process build; reruns redo only missing shards."""
import json
import os
import shutil
import socket
import subprocess
import sys

import faiss
import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import make_checkpoint, make_gallery
from retrieval.cli.build_index import main as build_index_main
from retrieval.index import (build_distributed_index, load_index, search, set_search_params, slice_bounds,
                             work_dir_for)
from retrieval.index.distributed import shard_paths, table_sha256
from tests.index.same_search import assert_same_search

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# 4 classes x 42 images: 168 >= 39 x 4 training vectors for IVF4 and for 2-bit PQ (4 centroids per sub-quantizer)
PER_CLASS, FLAT, PQ = 42, "IVF4,Flat", "IVF4,PQ8x2"


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    return {"root": root, "gallery": make_gallery(root / "gallery", classes=4, per_class=PER_CLASS, size=32),
            "ckpt": make_checkpoint(root / "a.pt")}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flags(big, out, factory, *extra):
    return ["--checkpoint", str(big["ckpt"]), "--out", str(out), "--images", str(big["gallery"]), "--folder-labels",
            "--index-type", factory, "--workers", "0", "--device", "cpu", *extra]


def _torchrun(big, out, factory, *extra, kill_rank=None):
    """build_index under torchrun with 2 ranks; kill_rank: that rank SIGKILLs itself before writing its shard."""
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    program = ["-m", "retrieval.cli.build_index"]
    if kill_rank is not None:
        env["KILL_RANK"] = str(kill_rank)
        program = [os.path.join(ROOT, "tests", "index", "kill_rank.py")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           *program, *_flags(big, out, factory, *extra)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    if kill_rank is None:
        assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _single(big, out, factory):
    # torchrun starts its ranks with OMP_NUM_THREADS=1; the reference embeds with one thread too, so both
    # runs do the same float arithmetic (2 threads vs 1 moves embeddings by ~2e-7, batch splits by 0).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert build_index_main(_flags(big, out, factory, "-q", "--save-embeddings")) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def _lists(index):
    """Per inverted list: (sorted ids, their codes in id order) — the whole content of an IVF index."""
    ivf = faiss.extract_index_ivf(index)
    out = []
    for i in range(ivf.nlist):
        n = ivf.invlists.list_size(i)
        ids = faiss.rev_swig_ptr(ivf.invlists.get_ids(i), n).copy()
        codes = faiss.rev_swig_ptr(ivf.invlists.get_codes(i), n * ivf.code_size).copy().reshape(n, -1)
        order = np.argsort(ids)
        out.append((ids[order], codes[order]))
    return out


def _assert_same_index(dist_dir, single_dir):
    (a, meta_a, man_a), (b, meta_b, man_b) = load_index(dist_dir), load_index(single_dir)
    assert man_a["ondisk"] and not man_b.get("ondisk")
    for key in ("dim", "count", "factory", "checkpoint_sha256", "source"):
        assert man_a[key] == man_b[key], key
    assert man_a["metadata_file"] == "metadata.parquet" and "metadata_file" not in man_b  # Parquet at scale
    pd.testing.assert_frame_equal(meta_a, meta_b)  # global id = row of the single-process build
    for (ids_a, codes_a), (ids_b, codes_b) in zip(_lists(a), _lists(b)):
        np.testing.assert_array_equal(ids_a, ids_b)  # the same quantizer put every vector in the same list
        np.testing.assert_array_equal(codes_a, codes_b)
    queries = np.random.default_rng(0).standard_normal((50, a.d)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    assert_same_search(a, b, queries, nprobes=(1, 2))
    if (dist_dir / "embeddings.npy").exists():  # streamed from the ranks' saved slices, in id order
        np.testing.assert_array_equal(np.load(dist_dir / "embeddings.npy"), np.load(single_dir / "embeddings.npy"))
    return man_a


@pytest.fixture(scope="module")
def flat_run(big):
    out = big["root"] / "flat"
    proc = _torchrun(big, out, FLAT, "--keep-shards", "--save-embeddings")
    return out, proc


@pytest.mark.slow
def test_two_ranks_build_the_single_process_index(big, flat_run):
    out, proc = flat_run
    assert (out / "embeddings.npy").is_file()
    manifest = _assert_same_index(out, _single(big, big["root"] / "flat_single", FLAT))
    n = 4 * PER_CLASS
    assert manifest["shards"] == 2 and manifest["distributed"]["slices"] == [[0, n // 2], [n // 2, n]]
    assert f"indexed {n} images on 2 ranks" in proc.stdout
    for rank, (start, stop) in enumerate(slice_bounds(n, 2)):  # each rank embedded its own slice once
        assert f"rank {rank}/2: embedding rows {start}..{stop - 1}" in proc.stderr
    receipts = [json.loads(p.with_suffix(".json").read_text()) for p in shard_paths(work_dir_for(out), 2)]
    assert [(r["start"], r["stop"]) for r in receipts] == [(0, n // 2), (n // 2, n)]
    assert receipts[0]["table_sha256"] == table_sha256(load_index(out)[1].iloc[: n // 2])


@pytest.mark.slow
def test_a_killed_rank_costs_only_its_shard_and_the_pq_build_equals_the_single_process_one(big):
    # PQ here (Flat above): train_size unset, so rank 0 trains on all rows in global order, the single-process
    # build's training set, and the PQ codebooks (and codes) are identical by construction, not merely close.
    out = big["root"] / "pq"
    proc = _torchrun(big, out, PQ, "--keep-shards", "--save-embeddings", kill_rank=1)
    assert proc.returncode != 0 and not out.exists()  # no index folder from a failed job
    kept, lost = shard_paths(work_dir_for(out), 2)
    assert kept.is_file() and not lost.exists()  # rank 1 was SIGKILLed before writing its shard
    assert not [p for p in work_dir_for(out).iterdir() if ".tmp" in p.name]  # only finished files or none
    kept_mtime = kept.stat().st_mtime_ns
    proc = _torchrun(big, out, PQ, "--save-embeddings", "--keep-shards")
    assert "rank 0/2: reusing finished shard shard-00000-of-00002.faiss" in proc.stderr
    assert "embedding rows" not in proc.stderr  # rank 1's slice was saved before it died: nobody embeds again
    assert "rank 1/2: reusing saved embeddings embeddings-00001-of-00002.npy" in proc.stderr
    assert "rank 1/2: building shard shard-00001-of-00002.faiss" in proc.stderr
    assert "training" not in proc.stderr  # the trained index was reused too
    assert kept.stat().st_mtime_ns == kept_mtime and lost.is_file()  # read, not rewritten; rebuilt
    # the resumed job's folder holds what an uninterrupted build holds: ids, metadata, codes, embeddings
    _assert_same_index(out, _single(big, big["root"] / "pq_single", PQ))


def test_flags_that_need_torchrun_or_do_not_fit_it(big, tmp_path, monkeypatch, capsys):
    assert build_index_main(_flags(big, tmp_path / "x", FLAT, "--train-size", "100")) == 2
    assert "--train-size only applies to a build under torchrun" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert build_index_main(_flags(big, tmp_path / "x", FLAT, "--append")) == 2
    assert "--append: not available under torchrun" in capsys.readouterr().err
    flags = [f for f in _flags(big, tmp_path / "x", FLAT) if f not in ("--index-type", FLAT)]
    assert build_index_main(flags) == 2
    assert "--index-type: a build under torchrun needs an IVF factory" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def _unit(n, d=16, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_receipts_decide_what_a_rerun_reuses(tmp_path):
    # one rank in-process: the restart rules without a process group (the torchrun tests above cover 2 ranks)
    x = _unit(300, seed=4)
    table = pd.DataFrame({"path": [f"/g/{i}.jpg" for i in range(300)], "label": np.arange(300) % 5})
    calls = []

    def embed(start, stop):
        calls.append((start, stop))
        return x[start:stop]

    def build(**kw):
        args = {"factory": FLAT, "rank": 0, "world_size": 1, "checkpoint_sha256": "a" * 64, "keep_shards": True,
                "overwrite": True, **kw}
        return build_distributed_index(embed, args.pop("table", table), tmp_path / "idx", **args)

    first = build(train_size=200)
    assert calls == [(0, 300)] and first["distributed"]["train_size"] == 200
    build(train_size=200)
    assert calls == [(0, 300)]  # trained index and shard reused: nothing embedded
    build(train_size=200, checkpoint_sha256="b" * 64)  # another model: embed and train again
    build(train_size=200, checkpoint_sha256="b" * 64, table=table.assign(path=table["path"] + "x"))  # other images
    build(train_size=180, checkpoint_sha256="b" * 64, table=table.assign(path=table["path"] + "x"))  # other sample
    assert calls == [(0, 300)] * 4
    (tmp_path / ".idx.shards" / "trained.faiss").write_bytes(b"broken")  # same size check fails: retrain
    build(train_size=180, checkpoint_sha256="b" * 64, table=table.assign(path=table["path"] + "x"))
    assert len(calls) == 5
    index, meta, _ = load_index(tmp_path / "idx")
    set_search_params(index, nprobe=4)
    assert (search(index, x, 1)[1][:, 0] == np.arange(300)).all() and meta["path"].iloc[0] == "/g/0.jpgx"
    build(train_size=180, checkpoint_sha256="b" * 64, table=table.assign(path=table["path"] + "x"),
          keep_shards=False)
    assert not (tmp_path / ".idx.shards").exists()


def test_saved_embeddings_spare_the_embedding_of_a_lost_shard(tmp_path):
    x = _unit(300, seed=6)
    table = pd.DataFrame({"path": [f"/g/{i}.jpg" for i in range(300)], "label": np.arange(300) % 5})
    calls = []

    def build(factory=FLAT):
        return build_distributed_index(lambda a, b: calls.append((a, b)) or x[a:b], table, tmp_path / "idx",
                                       factory=factory, rank=0, world_size=1, checkpoint_sha256="c" * 64,
                                       keep_shards=True, overwrite=True, save_embeddings=True)

    build()
    np.testing.assert_array_equal(np.load(tmp_path / "idx" / "embeddings.npy"), x)
    shard, = shard_paths(tmp_path / ".idx.shards", 1)
    shard.unlink()
    build()
    assert calls == [(0, 300)] and shard.is_file()  # the shard was rebuilt from the saved slice
    assert build("IVF2,Flat")["factory"] == "IVF2,Flat" and calls == [(0, 300)]  # another index, same embeddings
    build()
    part = tmp_path / ".idx.shards" / "embeddings-00000-of-00001.npy"
    np.save(part, x[:299])  # a part that does not match its receipt is embedded again
    shard.unlink()
    build()
    assert calls == [(0, 300)] * 2
    np.testing.assert_array_equal(np.load(tmp_path / "idx" / "embeddings.npy"), x)


def test_slices_are_contiguous_and_balanced():
    assert slice_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert slice_bounds(2, 2) == [(0, 1), (1, 2)]
    with pytest.raises(Exception, match="the gallery has 1 images for 2 ranks"):
        slice_bounds(1, 2)
