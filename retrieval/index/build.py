"""Build an index folder from embeddings and metadata, or append to one."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import IndexFormatError
from ..files import atomic_dir, remove_stale_temporaries, writer_lock
from ..provenance import versions
from ..vectors import check_embeddings
from .factory import create_index
from .folder import (EMBEDDINGS_FILE, check_compatible, check_replaceable, load_index, new_manifest,
                     normalise_metadata, now, write_folder)

log = logging.getLogger(__name__)

REMOVED = "removed"  # metadata column: True for entries removed with remove_entries


def _appended(folder: Path, x: np.ndarray, meta: pd.DataFrame, manifest_extra: dict, save_embeddings: bool):
    """Index, metadata, manifest and embeddings of ``folder`` with the new entries added."""
    index, old_meta, manifest = load_index(folder)
    if manifest.get("ondisk"):
        raise IndexFormatError(f"{folder}: an on-disk merged index cannot be appended to; build a new shard instead")
    check_compatible(manifest, folder, x.shape[1], manifest_extra.get("checkpoint_sha256"))
    seen = set(old_meta["path"])
    dup = int(meta["path"].isin(seen).sum())
    if dup:
        log.warning("append: %d of %d images are already in %s; they get a second entry", dup, len(meta), folder)
    old_emb = None
    if (folder / EMBEDDINGS_FILE).is_file():
        old_emb = np.load(folder / EMBEDDINGS_FILE)
    elif save_embeddings:
        raise IndexFormatError(f"{folder}: has no {EMBEDDINGS_FILE}, so --save-embeddings cannot cover the "
                               f"{index.ntotal} entries already indexed; rebuild with --save-embeddings --overwrite")
    index.add(x)
    meta = normalise_metadata(pd.concat([old_meta.drop(columns="id", errors="ignore"), meta], ignore_index=True),
                              index.ntotal)
    if REMOVED in meta.columns:  # entries appended after a removal are live
        meta[REMOVED] = meta[REMOVED].fillna(False).astype(bool)
    manifest.update({k: v for k, v in manifest_extra.items() if k not in ("created",)})
    manifest.update(count=int(index.ntotal), updated=now(), versions=versions())
    embeddings = None if old_emb is None else np.concatenate([old_emb, x])
    return index, meta, manifest, embeddings


def build_index(embeddings: np.ndarray, metadata: pd.DataFrame, out_dir: str | Path, *, factory: str = "Flat",
                manifest_extra: dict | None = None, overwrite: bool = False, append: bool = False,
                save_embeddings: bool = False) -> dict:
    """Write (or append to) an index folder; returns its manifest.

    embeddings: (N, dim) float32 L2-normalised; metadata: N rows in the same order with at
    least ``path`` (``label``, ``split`` and other columns kept). ``append`` adds to the folder's
    existing index (same dim and ``manifest_extra["checkpoint_sha256"]`` required); the factory
    is then the existing one. Nothing is written when anything fails.
    """
    out_dir = Path(out_dir)
    x = check_embeddings(embeddings)
    meta = normalise_metadata(metadata, len(x))
    with writer_lock(out_dir, "index writer"):  # appends read, add and rewrite: one writer at a time
        if append and out_dir.exists():
            index, meta, manifest, stored = _appended(out_dir, x, meta.drop(columns="id"), dict(manifest_extra or {}),
                                                      save_embeddings)
        else:
            index, manifest, stored = _new(out_dir, x, meta, factory, manifest_extra, overwrite, save_embeddings)
        with atomic_dir(out_dir, overwrite=True) as tmp:
            write_folder(tmp, index, meta, manifest, stored)
    remove_stale_temporaries(out_dir.parent, (out_dir.name,))
    log.info("wrote %s: %d vectors of dim %d (%s)", out_dir, index.ntotal, index.d, manifest["factory"])
    return manifest


def remove_entries(folder: str | Path, ids: list[int]) -> dict:
    """Mark index entries ``ids`` removed (column ``removed`` of the metadata); returns the new manifest.

    Ids stay stable: an entry keeps its row (FAISS id) and searches skip removed ones
    (retrieval.gallery), so ids held by clients never start naming another image. The folder is
    rewritten atomically under the writer lock, like an append. IndexFormatError for an id that
    does not exist, or an on-disk merged index (its lists cannot be rewritten here).
    """
    folder = Path(folder)
    with writer_lock(folder, "index writer"):
        index, meta, manifest = load_index(folder)
        if manifest.get("ondisk"):
            raise IndexFormatError(f"{folder}: entries of an on-disk merged index cannot be removed; rebuild it")
        unknown = sorted(i for i in set(ids) if not 0 <= i < index.ntotal)
        if unknown:
            raise IndexFormatError(f"{folder}: no entry with id {unknown[0]} (ids are 0..{index.ntotal - 1})")
        removed = meta[REMOVED].astype(bool) if REMOVED in meta.columns else pd.Series(False, index=meta.index)
        meta[REMOVED] = removed | meta["id"].isin(list(ids))
        manifest.update(updated=now(), removed=int(meta[REMOVED].sum()), versions=versions())
        stored = np.load(folder / EMBEDDINGS_FILE) if (folder / EMBEDDINGS_FILE).is_file() else None
        with atomic_dir(folder, overwrite=True) as tmp:
            write_folder(tmp, index, meta, manifest, stored)
    remove_stale_temporaries(folder.parent, (folder.name,))
    log.info("%s: removed %d entr%s (%d removed in all)", folder, len(set(ids)), "y" if len(set(ids)) == 1 else "ies",
             manifest["removed"])
    return manifest


def _new(out_dir: Path, x: np.ndarray, meta: pd.DataFrame, factory: str, manifest_extra: dict | None,
         overwrite: bool, save_embeddings: bool):
    """Index, manifest and stored embeddings of a new folder (``overwrite`` replaces only an index folder)."""
    if out_dir.exists() or out_dir.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{out_dir} already exists; pass --overwrite to replace it or --append to add to it")
        check_replaceable(out_dir)
    dup = int(meta["path"].duplicated().sum())
    if dup:
        log.warning("%d of %d images are listed more than once; each copy gets its own entry", dup, len(meta))
    index = create_index(factory, x)
    index.add(x)
    return index, new_manifest(index, factory, manifest_extra), (x if save_embeddings else None)
