"""A gallery index built by the ranks of a ``torchrun`` job: disjoint slices, one shard each, merged on disk.

The recipe of ``shards.py`` (train once, add shards, merge the lists on disk) spread over the
processes of a torch.distributed group (gloo on CPU, NCCL on GPUs), as clip-retrieval's
inference + autofaiss do it on Spark:

1. Rank r takes rows ``slice_bounds(N, world)[r]`` of the gallery table: contiguous and in
   table order, so global ids are the row numbers of the single-process build.
2. Every rank embeds its slice (the caller's ``embed(start, stop)``) and writes the rows of a
   seeded sample (``train_size``) that fall in it into the work folder; rank 0 trains the
   quantizer (+ PQ codebooks) on them in global row order and writes ``trained.faiss``.
3. Each rank adds its slice to the trained index and writes its shard atomically, with a
   small JSON receipt (checkpoint sha256, slice bounds, table hash, trained-index hash).
4. Rank 0 checks and merges the shards (``merge_shards``): a normal index folder with
   ``ondisk: true``, written atomically.

With ``save_embeddings`` each rank also writes its slice's embeddings (with a receipt) as soon
as it has them, before training; rank 0 streams them into the folder's ``embeddings.npy``,
and a rerun whose shard is missing loads its saved slice instead of embedding it again.

The work folder (``.DIR.shards`` beside ``DIR``) is shared by the ranks, so on several nodes
it must sit on a shared file system. A rerun with the same inputs reuses the trained index
and every shard whose receipt matches, and embeds only the slices that are missing; after a
successful merge the work folder is removed unless ``keep_shards``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..errors import DataError
from ..files import atomic_path, atomic_write_text, remove_stale_temporaries, sha256_file, writer_lock
from ..parallel import DistInfo, barrier, from_rank0
from .shards import build_shard, merge_shards, train_empty_index

log = logging.getLogger(__name__)

TRAINED_FILE = "trained.faiss"
RECEIPT_FORMAT = "retrieval-shard/1"


def slice_bounds(count: int, world_size: int) -> list[tuple[int, int]]:
    """[start, stop) of each rank's rows: contiguous, in order, sizes differing by at most one."""
    if count < world_size:
        raise DataError(f"the gallery has {count} images for {world_size} ranks; use at most {count} processes")
    return [(r * count // world_size, (r + 1) * count // world_size) for r in range(world_size)]


def work_dir_for(out_dir: str | Path) -> Path:
    """The ranks' shared work folder of the index folder ``out_dir``: ``.NAME.shards`` beside it."""
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.shards"


def table_sha256(table: pd.DataFrame) -> str:
    """sha256 of the image paths of ``table`` in order (what decides the embeddings of a slice)."""
    hashed = pd.util.hash_pandas_object(table["path"].astype(str), index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()


def _shard_name(rank: int, world_size: int) -> str:
    return f"shard-{rank:05d}-of-{world_size:05d}.faiss"


def _embeddings_name(rank: int, world_size: int) -> str:
    return f"embeddings-{rank:05d}-of-{world_size:05d}.npy"


def _sample_name(rank: int, world_size: int) -> str:
    return f"sample-{rank:05d}-of-{world_size:05d}.npy"


def _receipt(path: Path) -> Path:
    return path.with_suffix(".json")


def _read_receipt(path: Path) -> dict | None:
    """The receipt of ``path`` if both exist and the file has the recorded size, else None."""
    try:
        receipt = json.loads(_receipt(path).read_text())
    except (OSError, ValueError):
        return None
    if not path.is_file() or path.stat().st_size != receipt.get("bytes"):
        return None
    return receipt


def _write_receipt(path: Path, fields: dict) -> None:
    """Written after the file it describes: a receipt means its file is complete."""
    record = {"format": RECEIPT_FORMAT, **fields, "bytes": path.stat().st_size}
    atomic_write_text(_receipt(path), json.dumps(record, indent=2) + "\n")


def _matches(receipt: dict | None, expected: dict) -> bool:
    return receipt is not None and all(receipt.get(k) == v for k, v in expected.items())


# What a rank that lost its peers tells the user (retrieval.parallel turns gloo's error into this).
RESUME_HINT = "finished shards are kept, rerun the same command to resume"


def _sample_rows(count: int, train_size: int | None, seed: int) -> np.ndarray:
    """Sorted global rows to train on, as ``build_sharded_index`` draws them (all rows without train_size)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(count, size=min(count, train_size or count), replace=False))


def _train(work: Path, embeddings: np.ndarray, bounds: list[tuple[int, int]], info: DistInfo, factory: str,
           rows: np.ndarray, trained_key: dict) -> None:
    """Each rank writes its part of the sample; rank 0 trains on all of it in row order and writes trained.faiss."""
    rank, world_size = info.rank, info.world_size
    start, stop = bounds[rank]
    mine = rows[(rows >= start) & (rows < stop)] - start
    with atomic_path(work / _sample_name(rank, world_size)) as tmp, open(tmp, "wb") as fh:
        np.save(fh, embeddings[mine])
    barrier(info, "waiting for every rank's training sample", RESUME_HINT)
    if rank == 0:
        parts = [work / _sample_name(r, world_size) for r in range(world_size)]
        sample = np.concatenate([np.load(p) for p in parts])
        log.info("training %s on %d vectors gathered from %d ranks", factory, len(sample), world_size)
        trained = train_empty_index(factory, sample, work / TRAINED_FILE)
        _write_receipt(trained, {**trained_key, "sha256": sha256_file(trained)})
        for p in parts:
            p.unlink()
    barrier(info, "waiting for rank 0 to train the index", RESUME_HINT)


def _clean_work_dir(work: Path, world_size: int) -> None:
    """Remove the files this build wrote into ``work``, then the folder if nothing else is in it."""
    names = [TRAINED_FILE] + [n for r in range(world_size) for n in (_shard_name(r, world_size),
                                                                       _embeddings_name(r, world_size))]
    for name in names:
        for path in (work / name, _receipt(work / name)):
            path.unlink(missing_ok=True)
    for r in range(world_size):  # left by a run that failed while training
        (work / _sample_name(r, world_size)).unlink(missing_ok=True)
    try:
        work.rmdir()
    except OSError:
        log.warning("%s: kept (it holds files this build did not write)", work)


def _usable(path: Path, key: dict) -> str | None:
    """The sha256 of ``path`` when its receipt matches ``key`` and the file is the one the receipt describes."""
    receipt = _read_receipt(path)
    if not _matches(receipt, key):
        return None
    found = sha256_file(path)  # a read of the file: cheap next to embedding its slice again
    return found if found == receipt.get("sha256") else None


def _prepare(work: Path, world_size: int) -> None:
    """Rank 0: create the work folder and drop the temporaries of a killed run (its finished files stay)."""
    work.mkdir(parents=True, exist_ok=True)
    names = [TRAINED_FILE] + [n for r in range(world_size) for n in (_shard_name(r, world_size),
                                                                       _sample_name(r, world_size),
                                                                       _embeddings_name(r, world_size))]
    remove_stale_temporaries(work, tuple(names) + tuple(str(Path(n).with_suffix(".json")) for n in names))


def _build_shard(work: Path, embeddings: np.ndarray, start: int, key: dict) -> None:
    shard = work / _shard_name(key["rank"], key["world_size"])
    build_shard(work / TRAINED_FILE, embeddings, start, shard)
    _write_receipt(shard, {**key, "sha256": sha256_file(shard)})


def _save_embeddings(path: Path, embeddings: np.ndarray, key: dict) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(embeddings, dtype=np.float32))
    _write_receipt(path, {**key, "sha256": sha256_file(path)})


def _merge(work: Path, bounds: list[tuple[int, int]], metadata: pd.DataFrame, out_dir: str | Path, factory: str,
           extra: dict, overwrite: bool, keep_shards: bool, save_embeddings: bool) -> dict:
    """Rank 0: check and merge the shards into ``out_dir`` (under its writer lock), then tidy the work folder."""
    shards = [work / _shard_name(r, len(bounds)) for r in range(len(bounds))]
    parts = [work / _embeddings_name(r, len(bounds)) for r in range(len(bounds))] if save_embeddings else None
    with writer_lock(out_dir, "index writer"):
        manifest = merge_shards(work / TRAINED_FILE, shards, metadata.reset_index(drop=True), out_dir,
                                factory=factory, manifest_extra=extra, overwrite=overwrite, embeddings_parts=parts)
    if not keep_shards:
        _clean_work_dir(work, len(bounds))
    return manifest


def build_distributed_index(embed: Callable[[int, int], np.ndarray], metadata: pd.DataFrame, out_dir: str | Path,
                            *, factory: str, rank: int, world_size: int, checkpoint_sha256: str,
                            train_size: int | None = None, seed: int = 0, manifest_extra: dict | None = None,
                            overwrite: bool = False, keep_shards: bool = False, save_embeddings: bool = False,
                            work_dir: str | Path | None = None) -> dict | None:
    """Build ``out_dir`` from the ranks of a process group; rank 0 returns the manifest, the others None.

    embed(start, stop): embeddings (stop-start, dim) float32 L2-normalised of metadata rows
    start … stop-1 (called at most once per rank, and not at all when the rank's shard and
    the trained index of an earlier run can be reused). metadata: the whole gallery table,
    identical on every rank. With world_size 1 no process group is needed. Rank 0 holds a
    lock on the work folder for the whole build, so two jobs with one --out take turns.
    save_embeddings: also write the folder's embeddings.npy (see the module docstring).
    """
    work = Path(work_dir) if work_dir is not None else work_dir_for(out_dir)
    with writer_lock(work, "distributed build") if rank == 0 else contextlib.nullcontext():
        return _build(embed, metadata, Path(out_dir), work, factory=factory, info=DistInfo(rank, world_size),
                      checkpoint_sha256=checkpoint_sha256, train_size=train_size, seed=seed,
                      manifest_extra=manifest_extra, overwrite=overwrite, keep_shards=keep_shards,
                      save_embeddings=save_embeddings)


def _embed_slice(embed, work: Path, rank: int, world_size: int, start: int, stop: int, key: dict,
                 save_embeddings: bool) -> np.ndarray:
    """The slice's embeddings: saved by an earlier run (with save_embeddings), else ``embed``, saved if asked."""
    path = work / _embeddings_name(rank, world_size)
    if save_embeddings and _usable(path, key) is not None:
        log.info("rank %d/%d: reusing saved embeddings %s (rows %d..%d)", rank, world_size, path.name, start,
                 stop - 1)
        return np.load(path, mmap_mode="r")
    log.info("rank %d/%d: embedding rows %d..%d", rank, world_size, start, stop - 1)
    embeddings = embed(start, stop)
    if len(embeddings) != stop - start:
        raise DataError(f"rank {rank}: embedded {len(embeddings)} images for rows {start}..{stop - 1}")
    if save_embeddings:
        _save_embeddings(path, embeddings, key)
    return embeddings


def _keys(metadata: pd.DataFrame, bounds: list[tuple[int, int]], rank: int, factory: str, checkpoint_sha256: str,
          sample_size: int, seed: int) -> tuple[dict, dict]:
    """(trained key, shard key): what the receipts of an earlier run's trained index and this rank's shard must hold."""
    start, stop = bounds[rank]
    trained_key = {"factory": factory, "checkpoint_sha256": checkpoint_sha256, "count": len(metadata),
                   "table_sha256": table_sha256(metadata) if rank == 0 else None, "sample_size": sample_size,
                   "seed": seed}
    shard_key = {"factory": factory, "checkpoint_sha256": checkpoint_sha256, "start": start, "stop": stop,
                 "table_sha256": table_sha256(metadata.iloc[start:stop]), "rank": rank, "world_size": len(bounds)}
    return trained_key, shard_key


def _slice_key(shard_key: dict) -> dict:
    # a slice's embeddings do not depend on the index type: a rerun with another factory reuses them
    return {k: v for k, v in shard_key.items() if k != "factory"}


def _shard_path(work: Path, shard_key: dict) -> Path:
    return work / _shard_name(shard_key["rank"], shard_key["world_size"])


def _reusable(work: Path, shard_key: dict, trained_sha: str | None, save_embeddings: bool) -> bool:
    """Whether an earlier run's shard of this rank (built on the trained index ``trained_sha``) can be kept."""
    if trained_sha is None:
        return False
    if _usable(_shard_path(work, shard_key), {**shard_key, "trained_sha256": trained_sha}) is None:
        return False
    if not save_embeddings:  # with it, the shard alone is not enough: the merge also needs the saved slice
        return True
    path = work / _embeddings_name(shard_key["rank"], shard_key["world_size"])
    return _usable(path, _slice_key(shard_key)) is not None


def _write_shard(work: Path, embeddings: np.ndarray | None, shard_key: dict, trained_sha: str, reuse: bool) -> None:
    """This rank's shard: kept from an earlier run when ``reuse``, else built from ``embeddings``."""
    rank, world_size, start, stop = (shard_key[k] for k in ("rank", "world_size", "start", "stop"))
    name = _shard_path(work, shard_key).name
    if reuse:
        log.info("rank %d/%d: reusing finished shard %s (ids %d..%d)", rank, world_size, name, start, stop - 1)
        return
    log.info("rank %d/%d: building shard %s (ids %d..%d)", rank, world_size, name, start, stop - 1)
    _build_shard(work, embeddings, start, {**shard_key, "trained_sha256": trained_sha})


def _build(embed, metadata: pd.DataFrame, out_dir: Path, work: Path, *, factory: str, info: DistInfo,
           checkpoint_sha256: str, train_size: int | None, seed: int, manifest_extra: dict | None, overwrite: bool,
           keep_shards: bool, save_embeddings: bool) -> dict | None:
    """The steps of ``build_distributed_index`` on one rank: prepare, embed, train, shard, merge."""
    bounds = slice_bounds(len(metadata), info.world_size)
    if info.is_main:
        _prepare(work, info.world_size)
    barrier(info, "waiting for rank 0 to create the work folder", RESUME_HINT)
    rows = _sample_rows(len(metadata), train_size, seed)
    trained_key, shard_key = _keys(metadata, bounds, info.rank, factory, checkpoint_sha256, len(rows), seed)
    trained_sha = from_rank0(_usable(work / TRAINED_FILE, trained_key) if info.is_main else None, info,
                             hint=RESUME_HINT)
    reuse = _reusable(work, shard_key, trained_sha, save_embeddings)
    embeddings = None if reuse else _embed_slice(embed, work, info.rank, info.world_size, *bounds[info.rank],
                                                 _slice_key(shard_key), save_embeddings)
    if trained_sha is None:
        _train(work, embeddings, bounds, info, factory, rows, trained_key)
        trained_sha = from_rank0(sha256_file(work / TRAINED_FILE) if info.is_main else None, info, hint=RESUME_HINT)
        reuse = _reusable(work, shard_key, trained_sha, save_embeddings=False)
    _write_shard(work, embeddings, shard_key, trained_sha, reuse)
    barrier(info, "waiting for every rank's shard", RESUME_HINT)
    if not info.is_main:
        return None
    extra = {**(manifest_extra or {}), "distributed": {"world_size": info.world_size, "slices": bounds,
                                                        "train_size": len(rows), "seed": seed}}
    return _merge(work, bounds, metadata, out_dir, factory, extra, overwrite, keep_shards, save_embeddings)


def shard_paths(work_dir: str | Path, world_size: int) -> list[Path]:
    """The shard files a ``world_size``-rank build writes into ``work_dir``, in rank order."""
    return [Path(work_dir) / _shard_name(r, world_size) for r in range(world_size)]

