"""The gallery index folder: FAISS index + metadata table + manifest, written atomically.

Folder layout (DESIGN.md "Index folder")::

    index.faiss     faiss.write_index of an inner-product index over L2-normalised embeddings
    metadata.csv    one row per index entry, in index order: id, path, label, split (+ extra columns);
                    label is text ("" when unknown)
    manifest.json   format, dim, count, metric, factory, normalised, index_bytes, created, versions,
                    plus what the caller adds (checkpoint path, checkpoint_sha256, its config)
    embeddings.npy  optional (N, dim) float32 copy of the embeddings, row i = id i

The folder is built in a temporary folder and renamed into place (retrieval.files.atomic_dir):
a crash leaves the previous index or none. Appending rewrites the whole folder the same way.
Factory strings are FAISS's (``Flat``, ``IVF1024,Flat``, ``HNSW32``, ``IVF4096,PQ64``, ...);
indexes that need training are trained on the gallery itself.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd

from .errors import ConfigError, DataError, IndexFormatError
from .files import atomic_dir
from .metrics import sort_ties
from .runtime import versions

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
METADATA_FILE = "metadata.csv"
MANIFEST_FILE = "manifest.json"
EMBEDDINGS_FILE = "embeddings.npy"
FORMAT = "retrieval-index/1"

# k-means wants at least this many training points per centroid; below it FAISS warns and the
# centroids are poor (faiss/Clustering.h, ClusteringParameters::min_points_per_centroid = 39).
MIN_POINTS_PER_CENTROID = 39


def _check_embeddings(embeddings: np.ndarray) -> np.ndarray:
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"embeddings: expected a non-empty (N, dim) array, got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1)
    if not np.all(np.isfinite(norms)) or np.abs(norms - 1).max() > 1e-3:
        raise ValueError("embeddings: expected finite L2-normalised rows (the index uses inner product = cosine); "
                         f"norms range {norms.min():.4g}..{norms.max():.4g}")
    return x


def _label_text(values: pd.Series) -> pd.Series:
    """Labels as text, "" when unknown (ints stay "12", not "12.0", even next to missing values)."""
    def one(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
            return ""
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            return str(int(v))
        return str(v)
    return pd.Series([one(v) for v in values], index=values.index, dtype=object)


def normalise_metadata(metadata: pd.DataFrame, count: int) -> pd.DataFrame:
    """Metadata in the stored form: columns id, path, label (text), split (+ others), one row per entry."""
    if "path" not in metadata.columns:
        raise ValueError(f"metadata: needs a 'path' column, got {list(metadata.columns)}")
    if len(metadata) != count:
        raise ValueError(f"metadata: {len(metadata)} rows for {count} embeddings")
    meta = metadata.drop(columns=[c for c in ("id",) if c in metadata.columns]).reset_index(drop=True)
    meta["path"] = meta["path"].astype(str)
    meta["label"] = _label_text(meta["label"]) if "label" in meta.columns else ""
    meta["split"] = meta["split"].fillna("").astype(str) if "split" in meta.columns else ""
    meta.insert(0, "id", np.arange(count, dtype=np.int64))
    first = ["id", "path", "label", "split"]
    return meta[first + [c for c in meta.columns if c not in first]]


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


def _parse_factory(factory: str, dim: int) -> faiss.Index:
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
    index = _parse_factory(factory, dim)
    if not index.is_trained:
        _check_training_size(index, factory, count)


def create_index(factory: str, train_vectors: np.ndarray) -> faiss.Index:
    """An empty inner-product index from a FAISS factory string, trained on ``train_vectors`` (N, dim) when needed.

    Raises ConfigError for a string FAISS cannot parse and DataError when the gallery is too
    small to train it (naming the factory and how many vectors it needs).
    """
    index = _parse_factory(factory, train_vectors.shape[1])
    if not index.is_trained:
        n = len(train_vectors)
        _check_training_size(index, factory, n)
        log.info("training %s on %d vectors", factory, n)
        try:
            index.train(train_vectors)
        except RuntimeError as err:
            raise DataError(f"--index-type '{factory}': FAISS could not train it on {n} vectors: {err}") from None
    return index


def read_manifest(folder: str | Path) -> dict:
    """The manifest of an index folder (IndexFormatError naming the file when missing or not JSON)."""
    path = Path(folder) / MANIFEST_FILE
    if not Path(folder).is_dir():
        raise IndexFormatError(f"index folder not found: {folder}")
    if not path.is_file():
        raise IndexFormatError(f"{path}: missing; {folder} is not an index folder written by build_index")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise IndexFormatError(f"{path}: not valid JSON ({err})") from None
    missing = [k for k in ("dim", "count", "metric", "factory") if k not in manifest]
    if not isinstance(manifest, dict) or missing:
        raise IndexFormatError(f"{path}: not an index manifest (missing keys: {', '.join(missing)})")
    return manifest


def _read_faiss(path: Path, manifest: dict) -> faiss.Index:
    if not path.is_file():
        raise IndexFormatError(f"{path}: missing")
    size = path.stat().st_size
    expected = manifest.get("index_bytes")
    if expected is not None and size != expected:
        raise IndexFormatError(f"{path}: {size:,} bytes but the manifest records {expected:,}: "
                               "the file is truncated or was replaced")
    if manifest.get("ondisk"):
        return _read_ondisk(path, manifest)
    try:
        return faiss.read_index(str(path))
    except RuntimeError as err:
        raise IndexFormatError(f"{path}: FAISS cannot read it (truncated or not a FAISS index): "
                               f"{str(err).strip().splitlines()[-1]}") from None


def _read_ondisk(path: Path, manifest: dict) -> faiss.Index:
    """A merged index whose lists live in index.ivfdata beside it (retrieval.index_shards)."""
    from .index_shards import IVFDATA_FILE, in_dir

    data = path.parent / IVFDATA_FILE
    if not data.is_file():
        raise IndexFormatError(f"{data}: missing (the inverted lists of the on-disk index {path})")
    if manifest.get("ivfdata_bytes") is not None and data.stat().st_size != manifest["ivfdata_bytes"]:
        raise IndexFormatError(f"{data}: {data.stat().st_size:,} bytes but the manifest records "
                               f"{manifest['ivfdata_bytes']:,}: the file is truncated or was replaced")
    try:
        # Plain read: OnDiskInvertedLists memory-maps index.ivfdata by itself, so the lists stay on
        # disk. IO_FLAG_MMAP would segfault on the first search with faiss-cpu 1.15.1
        # (tests/test_index_shards.py). The stored .ivfdata name is relative to the folder.
        with in_dir(path.parent):
            return faiss.read_index(path.name)
    except RuntimeError as err:
        raise IndexFormatError(f"{path}: FAISS cannot read the on-disk index: "
                               f"{str(err).strip().splitlines()[-1]}") from None


def _read_metadata(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise IndexFormatError(f"{path}: missing")
    try:
        meta = pd.read_csv(path, dtype={"path": str, "label": str, "split": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise IndexFormatError(f"{path}: not a readable CSV ({err})") from None
    if "path" not in meta.columns:
        raise IndexFormatError(f"{path}: no 'path' column (found {list(meta.columns)})")
    return meta


def load_index(folder: str | Path) -> tuple[faiss.Index, pd.DataFrame, dict]:
    """(index, metadata, manifest) of an index folder; every inconsistency is an IndexFormatError naming the file."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    index = _read_faiss(folder / INDEX_FILE, manifest)
    meta = _read_metadata(folder / METADATA_FILE)
    if index.d != manifest["dim"]:
        raise IndexFormatError(f"{folder / INDEX_FILE}: dimension {index.d} but {MANIFEST_FILE} says {manifest['dim']}")
    if index.ntotal != manifest["count"]:
        raise IndexFormatError(f"{folder / INDEX_FILE}: {index.ntotal} vectors but {MANIFEST_FILE} says "
                               f"{manifest['count']}")
    if len(meta) != index.ntotal:
        raise IndexFormatError(f"{folder / METADATA_FILE}: {len(meta)} rows but {INDEX_FILE} holds "
                               f"{index.ntotal} vectors (one row per index entry expected)")
    return index, meta, manifest


def check_compatible(manifest: dict, folder: str | Path, dim: int, checkpoint_sha256: str | None) -> None:
    """IndexFormatError unless the index was built by this model: same embedding dim and checkpoint hash."""
    if manifest["dim"] != dim:
        raise IndexFormatError(f"{Path(folder) / MANIFEST_FILE}: index has dimension {manifest['dim']} but the model "
                               f"embeds to {dim}; it was built by another model")
    stored = manifest.get("checkpoint_sha256")
    if checkpoint_sha256 is not None and stored is not None and stored != checkpoint_sha256:
        raise IndexFormatError(
            f"{Path(folder) / MANIFEST_FILE}: index was built with checkpoint sha256 {stored[:12]}… "
            f"({manifest.get('checkpoint', '?')}) but this checkpoint is {checkpoint_sha256[:12]}…; "
            "embeddings of different models are not comparable (rebuild the index)")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write_folder(tmp: Path, index: faiss.Index, meta: pd.DataFrame, manifest: dict,
                  embeddings: np.ndarray | None) -> None:
    faiss.write_index(index, str(tmp / INDEX_FILE))
    manifest["index_bytes"] = (tmp / INDEX_FILE).stat().st_size
    meta.to_csv(tmp / METADATA_FILE, index=False)
    if embeddings is not None:
        np.save(tmp / EMBEDDINGS_FILE, embeddings)
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    for name in os.listdir(tmp):
        with open(tmp / name, "rb") as fh:
            os.fsync(fh.fileno())


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
    manifest.update({k: v for k, v in manifest_extra.items() if k not in ("created",)})
    manifest.update(count=int(index.ntotal), updated=_now(), versions=versions())
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
    x = _check_embeddings(embeddings)
    extra = dict(manifest_extra or {})
    meta = normalise_metadata(metadata, len(x))
    if append and out_dir.exists():
        index, meta, manifest, stored = _appended(out_dir, x, meta.drop(columns="id"), extra, save_embeddings)
    else:
        if out_dir.exists() and not overwrite:
            raise FileExistsError(f"{out_dir} already exists; pass --overwrite to replace it or --append to add to it")
        index = create_index(factory, x)
        index.add(x)
        manifest = {"format": FORMAT, "dim": int(x.shape[1]), "count": int(index.ntotal),
                    "metric": "inner_product", "factory": factory, "normalised": True,
                    "created": _now(), "versions": versions(), **extra}
        stored = x if save_embeddings else None
    with atomic_dir(out_dir, overwrite=True) as tmp:
        _write_folder(tmp, index, meta, manifest, stored)
    log.info("wrote %s: %d vectors of dim %d (%s)", out_dir, index.ntotal, index.d, manifest["factory"])
    return manifest


def set_search_params(index: faiss.Index, nprobe: int | None = None, ef_search: int | None = None) -> None:
    """Speed/accuracy knobs: IVF lists visited (``nprobe``), HNSW candidate list (``ef_search``)."""
    params = faiss.ParameterSpace()
    if nprobe is not None and faiss.try_extract_index_ivf(index) is not None:
        params.set_index_parameter(index, "nprobe", int(nprobe))
    if ef_search is not None and "HNSW" in type(faiss.downcast_index(index)).__name__:
        params.set_index_parameter(index, "efSearch", int(ef_search))


def search(index: faiss.Index, queries: np.ndarray, k: int, chunk_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by inner product: queries (Nq, dim) → (scores (Nq, k) float32, ids (Nq, k) int64).

    k larger than the index is clamped with a warning. Ties are ranked by id (lower first), as
    in retrieval.metrics. An approximate index may return fewer than k hits for a query; the
    missing ones have id -1 and score -inf.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != index.d:
        raise ValueError(f"queries: expected (N, {index.d}), got shape {q.shape}")
    if k < 1:
        raise ValueError(f"k: expected >= 1, got {k}")
    if k > index.ntotal:
        log.warning("k=%d is larger than the gallery (%d items); clamped to %d", k, index.ntotal, index.ntotal)
        k = int(index.ntotal)
    scores = np.empty((len(q), k), dtype=np.float32)
    ids = np.empty((len(q), k), dtype=np.int64)
    for start in range(0, len(q), chunk_size):
        s, i = index.search(q[start:start + chunk_size], k)
        s[i < 0] = -np.inf
        sort_ties(s, i)
        scores[start:start + len(s)], ids[start:start + len(s)] = s, i
    return scores, ids
