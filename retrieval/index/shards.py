"""Galleries beyond one machine's memory: IVF shards built in parallel, merged into one on-disk index.

Recipe (FAISS wiki "Indexes that do not fit in RAM"; faiss/contrib/ondisk.py):

1. ``train_empty_index``: train the IVF (or IVF-PQ) index once on a sample of the gallery and
   write it empty. Every shard starts from this file, so all shards share the coarse quantizer
   (and PQ codebooks) and their inverted lists can be concatenated.
2. ``build_shard``: on any machine, load the empty index, add one chunk of the gallery with
   its global ids (``start_id`` …), write the shard. Shards are independent: build them in
   parallel processes or on different machines.
3. ``merge_shards``: on the serving machine, ``check_shards`` proves the shards' ids cover
   0 … N-1 exactly once (a duplicate or a gap would attach the wrong metadata row), then
   ``faiss.contrib.ondisk.merge_ondisk`` streams the shards' lists into one ``index.ivfdata``
   file; the result is a normal index folder (retrieval.index.folder layout plus
   ``index.ivfdata``, metadata in ``metadata.parquet``, manifest ``ondisk: true``) that
   ``retrieval.index.load_index`` and ``query.py`` open like any other.

Reading: ``faiss.read_index`` without flags memory-maps ``index.ivfdata`` by itself
(OnDiskInvertedLists), so the lists are never loaded into RAM; the OS pages in the ``nprobe``
lists a query visits. Do not pass ``faiss.IO_FLAG_MMAP``: with faiss-cpu 1.15.1 the merged index
then segfaults on its first search (tests/index/test_shards.py keeps a check in a subprocess).
The ``.ivfdata`` path is stored relative (``index.ivfdata``), so the folder can be moved; the
loader opens it from inside the folder.

See docs/scaling.md for the memory arithmetic at 10M and 100M vectors.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Sequence

import faiss
import numpy as np
import pandas as pd

from ..errors import ConfigError, IndexFormatError
from ..files import atomic_dir, atomic_path
from ..vectors import check_embeddings
from .factory import create_index, parse_factory
from .folder import IVFDATA_FILE, check_replaceable, in_dir, new_manifest, normalise_metadata, write_folder

log = logging.getLogger(__name__)


def check_shardable(factory: str, dim: int) -> None:
    """ConfigError unless ``factory`` (for vectors of ``dim``) can be built in shards and merged on disk."""
    index = parse_factory(factory, dim)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        raise ConfigError(f"--index-type '{factory}': sharded / on-disk indexes need an IVF index "
                          "(e.g. IVF4096,Flat or IVF65536,PQ64)")
    if isinstance(faiss.downcast_index(ivf), faiss.IndexIVFPQR):
        raise ConfigError(f"--index-type '{factory}': IVF-PQR cannot be stored on disk (faiss.contrib.ondisk)")


def train_empty_index(factory: str, train_vectors: np.ndarray, path: str | Path) -> Path:
    """Train an IVF index from ``factory`` on train_vectors (N, dim) and write it, empty, to ``path`` (atomically)."""
    x = check_embeddings(train_vectors)
    check_shardable(factory, x.shape[1])
    index = create_index(factory, x)
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
    return Path(path)


def build_shard(trained_path: str | Path, embeddings: np.ndarray, start_id: int, shard_path: str | Path) -> Path:
    """Add embeddings (n, dim) with global ids start_id … start_id+n-1 to the empty trained index; write the shard.

    The shard is written atomically: a killed build leaves it complete or absent.
    """
    x = check_embeddings(embeddings)
    index = faiss.read_index(str(trained_path))
    if index.ntotal:
        raise IndexFormatError(f"{trained_path}: expected the empty trained index, it holds {index.ntotal} vectors")
    if index.d != x.shape[1]:
        raise ValueError(f"embeddings have dimension {x.shape[1]} but {trained_path} has {index.d}")
    index.add_with_ids(x, np.arange(start_id, start_id + len(x), dtype=np.int64))
    with atomic_path(shard_path) as tmp:
        faiss.write_index(index, str(tmp))
    log.info("shard %s: ids %d..%d", shard_path, start_id, start_id + len(x) - 1)
    return Path(shard_path)


def trained_fingerprint(index: faiss.Index) -> str:
    """sha256 of what shards must share to be merged: the coarse quantizer and, for IVF-PQ, the PQ codebooks."""
    ivf = faiss.extract_index_ivf(index)
    digest = hashlib.sha256(faiss.serialize_index(ivf.quantizer).tobytes())
    pq = getattr(faiss.downcast_index(ivf), "pq", None)
    if pq is not None:
        digest.update(faiss.vector_to_array(pq.centroids).tobytes())
    return digest.hexdigest()


def _shard_ids(ivf: faiss.IndexIVF) -> np.ndarray:
    """Every id stored in the inverted lists of ``ivf`` (list by list)."""
    lists, parts = ivf.invlists, []
    for i in range(ivf.nlist):
        n = lists.list_size(i)
        if n:
            ptr = lists.get_ids(i)
            parts.append(faiss.rev_swig_ptr(ptr, n).copy())
            lists.release_ids(i, ptr)
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


def _read_shard(path: str, trained: faiss.Index, trained_path: str | Path, fingerprint: str) -> np.ndarray:
    """The ids of shard ``path`` after checking it was built from ``trained`` (dimension, lists, quantizer)."""
    try:
        shard = faiss.read_index(path, faiss.IO_FLAG_MMAP)  # ids only: the codes stay on disk
    except RuntimeError as err:
        raise IndexFormatError(f"shard {path}: FAISS cannot read it: {str(err).strip().splitlines()[-1]}") from None
    ivf, want = faiss.try_extract_index_ivf(shard), faiss.extract_index_ivf(trained)
    if shard.d != trained.d:
        raise IndexFormatError(f"shard {path}: dimension {shard.d} but the trained index {trained_path} has "
                               f"{trained.d}")
    if ivf is None or ivf.nlist != want.nlist or ivf.code_size != want.code_size:
        raise IndexFormatError(f"shard {path}: not an IVF index with {want.nlist} lists and {want.code_size}-byte "
                               f"codes like {trained_path}")
    if trained_fingerprint(shard) != fingerprint:
        raise IndexFormatError(f"shard {path}: built from another trained index than {trained_path} (its coarse "
                               "quantizer or PQ codebooks differ), so its lists cannot be merged")
    return _shard_ids(ivf)


def _first_run(ids: np.ndarray) -> str:
    """'a..b' for the first run of consecutive values in sorted ``ids``."""
    end = np.flatnonzero(np.diff(ids) != 1)
    last = ids[end[0]] if len(end) else ids[-1]
    return f"{ids[0]}..{last}" if last != ids[0] else f"{ids[0]}"


def check_shards(trained: faiss.Index, shard_paths: Sequence[str], count: int, trained_path: str | Path) -> None:
    """IndexFormatError naming the shard unless the shards' ids cover 0 … count-1 exactly once.

    A duplicate or a gap would attach the wrong metadata row to a result (metadata row i = id i).
    Costs N bytes plus one shard's ids in RAM; the codes are not read.
    """
    fingerprint = trained_fingerprint(trained)
    seen = np.zeros(count, dtype=bool)
    ranges: list[tuple[str, int, int]] = []
    for path in shard_paths:
        ids = _read_shard(path, trained, trained_path, fingerprint)
        if not len(ids):
            raise IndexFormatError(f"shard {path}: holds no vectors")
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= count:
            raise IndexFormatError(f"shard {path}: holds id {lo if lo < 0 else hi} but the metadata has {count} rows "
                                   f"(ids 0..{count - 1})")
        unique, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise IndexFormatError(f"shard {path}: holds id {unique[counts > 1][0]} {counts.max()} times")
        if seen[unique].any():
            dup = int(unique[seen[unique]][0])
            other = next((p for p, a, b in ranges if a <= dup <= b), "an earlier shard")
            raise IndexFormatError(f"shard {path}: id {dup} is also in shard {other}; each id must be in one shard "
                                   "(were two shards built with overlapping start_id?)")
        seen[unique] = True
        ranges.append((path, lo, hi))
    missing = np.flatnonzero(~seen)
    if len(missing):
        before = max(((p, b) for p, _, b in ranges if b < missing[0]), key=lambda r: r[1], default=None)
        where = f" (after shard {before[0]}, which ends at id {before[1]})" if before else ""
        raise IndexFormatError(f"shards do not cover ids 0..{count - 1}: {len(missing)} ids are in no shard, first "
                               f"{_first_run(missing)}{where}; a shard is missing or was built with the wrong start_id")


def merge_shards(trained_path: str | Path, shard_paths: Sequence[str | Path], metadata: pd.DataFrame,
                 out_dir: str | Path, *, factory: str, manifest_extra: dict | None = None,
                 overwrite: bool = False, metadata_format: str = "parquet",
                 embeddings_parts: Sequence[str | Path] | None = None) -> dict:
    """Merge shards into an index folder with on-disk lists; returns the manifest.

    metadata: one row per gallery item in global id order (the shards' ids must cover
    0 … len(metadata)-1), stored as metadata.parquet (``metadata_format="csv"``: metadata.csv).
    embeddings_parts: .npy files whose rows, concatenated, are the embeddings of ids 0 … N-1,
    written as the folder's embeddings.npy (what exact search compares the index with).
    Written atomically like retrieval.index.build_index.
    """
    from faiss.contrib.ondisk import merge_ondisk

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite to replace it")
    check_replaceable(out_dir)
    shards = [str(Path(p).resolve()) for p in shard_paths]
    index = faiss.read_index(str(trained_path))
    check_shards(index, shards, len(metadata), trained_path)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        with in_dir(tmp):  # the .ivfdata name FAISS stores is relative to the folder
            merge_ondisk(index, shards, IVFDATA_FILE)
        if index.ntotal != len(metadata):
            raise IndexFormatError(f"merged shards hold {index.ntotal} vectors but metadata has {len(metadata)} rows")
        manifest = new_manifest(index, factory, manifest_extra, ondisk=True, shards=len(shards),
                                ivfdata_bytes=(tmp / IVFDATA_FILE).stat().st_size)
        write_folder(tmp, index, normalise_metadata(metadata, index.ntotal), manifest,
                     [Path(p) for p in embeddings_parts] if embeddings_parts else None, metadata_format)
    log.info("merged %d shards → %s (%d vectors, lists on disk)", len(shards), out_dir, manifest["count"])
    return manifest


def build_sharded_index(embeddings: np.ndarray, metadata: pd.DataFrame, out_dir: str | Path, work_dir: str | Path,
                        *, factory: str, shard_size: int, train_size: int | None = None,
                        manifest_extra: dict | None = None, overwrite: bool = False, seed: int = 0,
                        metadata_format: str = "parquet") -> dict:
    """One-machine driver of the recipe: train on a sample, one shard per ``shard_size`` rows, merge.

    embeddings: (N, dim) L2-normalised (np.load(..., mmap_mode="r") keeps a large array on disk);
    shards and the trained index go to ``work_dir``.
    """
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    n = len(embeddings)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(n, train_size or n), replace=False))
    trained = train_empty_index(factory, np.asarray(embeddings[sample]), work / "trained.faiss")
    shards = [build_shard(trained, np.asarray(embeddings[s:s + shard_size]), s, work / f"shard{i:05d}.faiss")
              for i, s in enumerate(range(0, n, shard_size))]
    metadata = metadata.reset_index(drop=True)
    return merge_shards(trained, shards, metadata, out_dir, factory=factory, manifest_extra=manifest_extra,
                        overwrite=overwrite, metadata_format=metadata_format)
