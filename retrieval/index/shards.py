"""Galleries beyond one machine's memory: IVF shards built in parallel, merged into one on-disk index.

Recipe (FAISS wiki "Indexes that do not fit in RAM"; faiss/contrib/ondisk.py):

1. ``train_empty_index``: train the IVF (or IVF-PQ) index once on a sample of the gallery and
   write it empty. Every shard starts from this file, so all shards share the coarse quantizer
   (and PQ codebooks) and their inverted lists can be concatenated.
2. ``build_shard``: on any machine, load the empty index, add one chunk of the gallery with
   its global ids (``start_id`` …), write the shard. Shards are independent: build them in
   parallel processes or on different machines.
3. ``merge_shards``: on the serving machine, ``faiss.contrib.ondisk.merge_ondisk`` streams the
   shards' lists into one ``index.ivfdata`` file; the result is a normal index folder
   (retrieval.index.folder layout plus ``index.ivfdata``, manifest ``ondisk: true``) that
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

import logging
from pathlib import Path
from typing import Sequence

import faiss
import numpy as np
import pandas as pd

from ..errors import ConfigError, IndexFormatError
from ..files import atomic_dir
from ..vectors import check_embeddings
from .factory import create_index
from .folder import IVFDATA_FILE, check_replaceable, in_dir, new_manifest, normalise_metadata, write_folder

log = logging.getLogger(__name__)


def train_empty_index(factory: str, train_vectors: np.ndarray, path: str | Path) -> Path:
    """Train an IVF index from ``factory`` on train_vectors (N, dim) and write it, empty, to ``path``."""
    x = check_embeddings(train_vectors)
    index = create_index(factory, x)
    if faiss.try_extract_index_ivf(index) is None:
        raise ConfigError(f"--index-type '{factory}': sharded / on-disk indexes need an IVF index "
                          "(e.g. IVF4096,Flat or IVF65536,PQ64)")
    if isinstance(faiss.downcast_index(faiss.try_extract_index_ivf(index)), faiss.IndexIVFPQR):
        raise ConfigError(f"--index-type '{factory}': IVF-PQR cannot be stored on disk (faiss.contrib.ondisk)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(path))
    return path


def build_shard(trained_path: str | Path, embeddings: np.ndarray, start_id: int, shard_path: str | Path) -> Path:
    """Add embeddings (n, dim) with global ids start_id … start_id+n-1 to the empty trained index; write the shard."""
    x = check_embeddings(embeddings)
    index = faiss.read_index(str(trained_path))
    if index.ntotal:
        raise IndexFormatError(f"{trained_path}: expected the empty trained index, it holds {index.ntotal} vectors")
    if index.d != x.shape[1]:
        raise ValueError(f"embeddings have dimension {x.shape[1]} but {trained_path} has {index.d}")
    index.add_with_ids(x, np.arange(start_id, start_id + len(x), dtype=np.int64))
    faiss.write_index(index, str(shard_path))
    log.info("shard %s: ids %d..%d", shard_path, start_id, start_id + len(x) - 1)
    return Path(shard_path)


def merge_shards(trained_path: str | Path, shard_paths: Sequence[str | Path], metadata: pd.DataFrame,
                 out_dir: str | Path, *, factory: str, manifest_extra: dict | None = None,
                 overwrite: bool = False) -> dict:
    """Merge shards into an index folder with on-disk lists; returns the manifest.

    metadata: one row per gallery item in global id order (the shards' ids must cover
    0 … len(metadata)-1). Written atomically like retrieval.index.build_index.
    """
    from faiss.contrib.ondisk import merge_ondisk

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite to replace it")
    check_replaceable(out_dir)
    shards = [str(Path(p).resolve()) for p in shard_paths]
    index = faiss.read_index(str(trained_path))
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        with in_dir(tmp):  # the .ivfdata name FAISS stores is relative to the folder
            merge_ondisk(index, shards, IVFDATA_FILE)
        if index.ntotal != len(metadata):
            raise IndexFormatError(f"merged shards hold {index.ntotal} vectors but metadata has {len(metadata)} rows")
        manifest = new_manifest(index, factory, manifest_extra, ondisk=True, shards=len(shards),
                                ivfdata_bytes=(tmp / IVFDATA_FILE).stat().st_size)
        write_folder(tmp, index, normalise_metadata(metadata, index.ntotal), manifest, None)
    log.info("merged %d shards → %s (%d vectors, lists on disk)", len(shards), out_dir, manifest["count"])
    return manifest


def build_sharded_index(embeddings: np.ndarray, metadata: pd.DataFrame, out_dir: str | Path, work_dir: str | Path,
                        *, factory: str, shard_size: int, train_size: int | None = None,
                        manifest_extra: dict | None = None, overwrite: bool = False, seed: int = 0) -> dict:
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
                        overwrite=overwrite)
