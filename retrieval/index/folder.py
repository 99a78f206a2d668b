"""The index folder format: file names, manifest, metadata table, reading, writing, checks.

Folder layout (DESIGN.md "Index folder")::

    index.faiss     faiss.write_index of an inner-product index over L2-normalised embeddings
    index.ivfdata   on-disk inverted lists of a merged sharded index (``shards.py``), else absent
    metadata.csv    one row per index entry, in index order: id, path, label, split (+ extra columns);
                    label is text ("" when unknown)
    metadata.parquet  the same table in Parquet, instead of metadata.csv, for merged on-disk indexes
                    (galleries of millions): read column-wise in a fraction of the CSV time, and by id
                    one row group at a time (``read_metadata_rows``); manifest ``metadata_file`` names it
    manifest.json   format, dim, count, metric, factory, normalised, index_bytes, metadata_sha256,
                    created, versions, plus what the caller adds (checkpoint path, checkpoint_sha256,
                    its config)
    embeddings.npy  optional (N, dim) float32 copy of the embeddings, row i = id i

This module is the only one that knows these files. A folder is written into a temporary
folder and renamed into place (retrieval.files.atomic_dir): a crash leaves the previous
index or none.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import faiss
import numpy as np
import pandas as pd

from ..errors import IndexFormatError
from ..files import FULL_ERRNOS, sha256_file, write_error
from ..provenance import versions

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
IVFDATA_FILE = "index.ivfdata"
METADATA_FILE = "metadata.csv"
METADATA_PARQUET = "metadata.parquet"
METADATA_ROW_GROUP = 65_536  # rows per Parquet row group: a by-id read decodes one group (a few MB)
MANIFEST_FILE = "manifest.json"
EMBEDDINGS_FILE = "embeddings.npy"
FORMAT = "retrieval-index/2"  # /2 adds metadata_sha256; /1 folders (no hash) are still read


@contextlib.contextmanager
def in_dir(folder: str | Path) -> Iterator[None]:
    """Run with ``folder`` as working directory (FAISS resolves the stored .ivfdata name against it)."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def now() -> str:
    """UTC time stamp of the manifest's created / updated fields."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def new_manifest(index: faiss.Index, factory: str, extra: dict | None = None, **fields: Any) -> dict:
    """The manifest of a new folder holding ``index`` (built from ``factory``), plus ``fields`` and ``extra``."""
    return {"format": FORMAT, "dim": int(index.d), "count": int(index.ntotal), "metric": "inner_product",
            "factory": factory, "normalised": True, **fields, "created": now(), "versions": versions(),
            **(extra or {})}


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
    """A merged index whose lists live in index.ivfdata beside it (retrieval.index.shards)."""
    data = path.parent / IVFDATA_FILE
    if not data.is_file():
        raise IndexFormatError(f"{data}: missing (the inverted lists of the on-disk index {path})")
    if manifest.get("ivfdata_bytes") is not None and data.stat().st_size != manifest["ivfdata_bytes"]:
        raise IndexFormatError(f"{data}: {data.stat().st_size:,} bytes but the manifest records "
                               f"{manifest['ivfdata_bytes']:,}: the file is truncated or was replaced")
    try:
        # Plain read: OnDiskInvertedLists memory-maps index.ivfdata by itself, so the lists stay on
        # disk. IO_FLAG_MMAP would segfault on the first search with faiss-cpu 1.15.1
        # (tests/index/test_shards.py). The stored .ivfdata name is relative to the folder.
        with in_dir(path.parent):
            return faiss.read_index(path.name)
    except RuntimeError as err:
        raise IndexFormatError(f"{path}: FAISS cannot read the on-disk index: "
                               f"{str(err).strip().splitlines()[-1]}") from None


def metadata_path(folder: str | Path, manifest: dict) -> Path:
    """The folder's metadata table: the file the manifest names (folders before Parquet: metadata.csv)."""
    name = manifest.get("metadata_file", METADATA_FILE)
    if name not in (METADATA_FILE, METADATA_PARQUET):
        raise IndexFormatError(f"{Path(folder) / MANIFEST_FILE}: metadata_file '{name}' is not "
                               f"{METADATA_FILE} or {METADATA_PARQUET}")
    return Path(folder) / name


def _read_parquet(path: Path, ids: np.ndarray | None = None, row_group: int | None = None) -> pd.DataFrame:
    """The Parquet table, whole or only the rows ``ids`` (reading just their row groups), with CSV's dtypes."""
    import pyarrow.parquet as pq

    try:
        if ids is None:
            meta = pd.read_parquet(path)
        else:
            groups = sorted(set((ids // row_group).tolist()))
            meta = pq.ParquetFile(path).read_row_groups(groups).to_pandas()
            first = {g: i * row_group for i, g in enumerate(groups)}  # row offset of each group read
            meta = meta.iloc[[first[g] + int(i) - g * row_group for i, g in zip(ids, ids // row_group)]]
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise IndexFormatError(f"{path}: not a readable Parquet table ({type(err).__name__}: {err})") from None
    for col in ("path", "label", "split"):
        if col in meta.columns:
            meta[col] = meta[col].astype(str)
    return meta.reset_index(drop=True)


def _read_metadata(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise IndexFormatError(f"{path}: missing")
    if path.suffix == ".parquet":
        meta = _read_parquet(path)
        if "path" not in meta.columns:
            raise IndexFormatError(f"{path}: no 'path' column (found {list(meta.columns)})")
        return meta
    try:
        meta = pd.read_csv(path, dtype={"path": str, "label": str, "split": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise IndexFormatError(f"{path}: not a readable CSV ({err})") from None
    if "path" not in meta.columns:
        raise IndexFormatError(f"{path}: no 'path' column (found {list(meta.columns)})")
    return meta


def _check_metadata_hash(folder: Path, manifest: dict) -> None:
    """The metadata table is the one the manifest was written with: a swapped row would name the wrong image."""
    path = metadata_path(folder, manifest)
    stored = manifest.get("metadata_sha256")
    if stored is None:
        if manifest.get("format") != "retrieval-index/1":
            raise IndexFormatError(f"{folder / MANIFEST_FILE}: no metadata_sha256, so {METADATA_FILE} cannot be "
                                   "checked; rebuild the index folder")
        log.warning("%s: written by an earlier version (no metadata hash); %s is not checked", folder, METADATA_FILE)
        return
    found = sha256_file(path)
    if found != stored:
        raise IndexFormatError(f"{path}: sha256 {found[:12]}… differs from the manifest's "
                               f"{stored[:12]}…: the table was edited or replaced after the index was built, so its "
                               "rows may no longer match the index entries (rebuild the index folder)")


def is_index_folder(path: str | Path) -> bool:
    """True for a folder holding a manifest this project wrote (what --overwrite may replace)."""
    try:
        return str(read_manifest(path).get("format", "")).startswith("retrieval-index/")
    except IndexFormatError:
        return False


def check_replaceable(path: str | Path) -> None:
    """IndexFormatError unless ``path`` is absent or an index folder of this project."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir():
        raise IndexFormatError(f"{path} is a file, not an index folder; refusing to replace it (choose another --out)")
    if not is_index_folder(path):
        raise IndexFormatError(f"{path} is not an index folder written by build_index (no valid {MANIFEST_FILE}); "
                               "refusing to replace it (choose another --out)")


# A reader opens the folder's files one by one while a writer may swap the whole folder (append, overwrite,
# removal): it can see one version's manifest and the next version's table. Such a mix is read again.
LOAD_ATTEMPTS = 10


def _manifest_bytes(folder: Path) -> bytes | None:
    try:
        return (folder / MANIFEST_FILE).read_bytes()
    except OSError:
        return None


def _being_replaced(folder: Path) -> bool:
    """True while a writer's swap is under way: the old folder sits in a ``.NAME.<pid>.<random>.old`` beside it."""
    return any(p.name.startswith(f".{folder.name}.") and p.name.endswith(".old") for p in folder.parent.glob(".*.old"))


def load_index(folder: str | Path) -> tuple[faiss.Index, pd.DataFrame, dict]:
    """(index, metadata, manifest) of an index folder; every inconsistency is an IndexFormatError naming the file.

    The files read are of one version: when a writer replaced the folder during the read (the manifest
    changed meanwhile, or the folder was briefly absent between the writer's two renames), it is read again.
    """
    folder = Path(folder)
    for attempt in range(LOAD_ATTEMPTS):
        before = _manifest_bytes(folder)
        try:
            loaded = _load_once(folder)
        except (IndexFormatError, OSError):  # OSError: a file vanished between its check and its read
            after = _manifest_bytes(folder)
            if attempt + 1 == LOAD_ATTEMPTS or (before is not None and after == before) or (
                    before is None and after is None and not _being_replaced(folder)):
                raise
        else:
            if _manifest_bytes(folder) == before:
                return loaded
        log.debug("%s: replaced by a writer while being read; reading it again", folder)
        time.sleep(min(0.5, 0.01 * 2 ** attempt))
    raise IndexFormatError(f"{folder}: replaced by a writer on each of {LOAD_ATTEMPTS} reads; try again")


def _load_once(folder: Path) -> tuple[faiss.Index, pd.DataFrame, dict]:
    manifest = read_manifest(folder)
    index = _read_faiss(folder / INDEX_FILE, manifest)
    meta = _read_metadata(metadata_path(folder, manifest))
    if index.d != manifest["dim"]:
        raise IndexFormatError(f"{folder / INDEX_FILE}: dimension {index.d} but {MANIFEST_FILE} says {manifest['dim']}")
    if index.ntotal != manifest["count"]:
        raise IndexFormatError(f"{folder / INDEX_FILE}: {index.ntotal} vectors but {MANIFEST_FILE} says "
                               f"{manifest['count']}")
    if len(meta) != index.ntotal:
        raise IndexFormatError(f"{metadata_path(folder, manifest)}: {len(meta)} rows but {INDEX_FILE} holds "
                               f"{index.ntotal} vectors (one row per index entry expected)")
    _check_metadata_hash(folder, manifest)
    return index, meta, manifest


def check_compatible(manifest: dict, folder: str | Path, dim: int, checkpoint_sha256: str | None) -> None:
    """IndexFormatError unless the index was built by this model: same embedding dim and checkpoint hash."""
    if manifest["dim"] != dim:
        raise IndexFormatError(f"{Path(folder) / MANIFEST_FILE}: index has dimension {manifest['dim']} but the model "
                               f"embeds to {dim}; it was built by another model")
    stored = manifest.get("checkpoint_sha256")
    if checkpoint_sha256 is not None and stored is None:
        raise IndexFormatError(f"{Path(folder) / MANIFEST_FILE}: has no checkpoint_sha256, so it cannot say which "
                               "model built the index; rebuild it with build_index.py --checkpoint")
    if checkpoint_sha256 is not None and stored != checkpoint_sha256:
        raise IndexFormatError(
            f"{Path(folder) / MANIFEST_FILE}: index was built with checkpoint sha256 {stored[:12]}… "
            f"({manifest.get('checkpoint', '?')}) but this checkpoint is {checkpoint_sha256[:12]}…; "
            "embeddings of different models are not comparable (rebuild the index)")


def stack_npy(parts: Sequence[str | Path], dest: Path, rows: int, dim: int, block_rows: int = 1 << 16) -> None:
    """Concatenate the (n_i, dim) float32 .npy files ``parts`` into ``dest`` a block at a time (RAM: one block).

    IndexFormatError naming the part when its shape or dtype does not fit, or the rows do not add up to ``rows``.
    """
    arrays = [np.load(p, mmap_mode="r") for p in parts]
    for path, a in zip(parts, arrays):
        if a.dtype != np.float32 or a.ndim != 2 or a.shape[1] != dim:
            raise IndexFormatError(f"{path}: {a.dtype} array of shape {a.shape}; expected (n, {dim}) float32")
    if sum(len(a) for a in arrays) != rows:
        raise IndexFormatError(f"{len(parts)} embedding parts hold {sum(len(a) for a in arrays)} rows but the "
                               f"index holds {rows} vectors")
    out = np.lib.format.open_memmap(dest, mode="w+", dtype=np.float32, shape=(rows, dim))
    start = 0
    for a in arrays:
        for s in range(0, len(a), block_rows):
            block = a[s:s + block_rows]
            out[start:start + len(block)] = block
            start += len(block)
    out.flush()
    del out


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn a write that ran out of room (full disk, file-size limit) into a WriteError naming ``path``."""
    try:
        yield
    except OSError as err:
        if err.errno in FULL_ERRNOS:
            raise write_error(path, err) from None
        raise


def write_faiss(index: faiss.Index, path: str | Path) -> None:
    """faiss.write_index through a Python file: a failed write raises (FAISS only prints a failed fclose, leaving
    a truncated file behind)."""
    with open(path, "wb") as fh:
        writer = faiss.PyCallbackIOWriter(fh.write)
        try:
            faiss.write_index(index, writer)
        finally:
            del writer


def write_folder(tmp: Path, index: faiss.Index, meta: pd.DataFrame, manifest: dict,
                  embeddings: np.ndarray | Sequence[Path] | None, metadata_format: str = "csv") -> None:
    """Write the folder's files into ``tmp`` (the temporary folder ``atomic_dir`` renames) and fsync them.

    embeddings: the (N, dim) array of ``embeddings.npy``, or .npy files holding its rows in order
    (the ranks' slices of a distributed build, streamed into one file), or None for none.

    metadata_format: "csv" (metadata.csv) or "parquet" (metadata.parquet, row groups of
    METADATA_ROW_GROUP rows, recorded in the manifest).
    """
    if metadata_format not in ("csv", "parquet"):
        raise ValueError(f"metadata_format: expected csv or parquet, got {metadata_format!r}")
    with _writing(tmp / INDEX_FILE):
        write_faiss(index, tmp / INDEX_FILE)
    manifest["index_bytes"] = (tmp / INDEX_FILE).stat().st_size
    if metadata_format == "parquet":
        with _writing(tmp / METADATA_PARQUET):
            meta.to_parquet(tmp / METADATA_PARQUET, index=False, row_group_size=METADATA_ROW_GROUP)
        manifest.update(metadata_file=METADATA_PARQUET, metadata_row_group=METADATA_ROW_GROUP)
    else:
        with _writing(tmp / METADATA_FILE):
            meta.to_csv(tmp / METADATA_FILE, index=False)
        manifest.pop("metadata_file", None)
        manifest.pop("metadata_row_group", None)
    manifest["metadata_sha256"] = sha256_file(metadata_path(tmp, manifest))
    with _writing(tmp / EMBEDDINGS_FILE):
        if isinstance(embeddings, np.ndarray):
            np.save(tmp / EMBEDDINGS_FILE, embeddings)
        elif embeddings is not None:
            stack_npy(embeddings, tmp / EMBEDDINGS_FILE, rows=index.ntotal, dim=index.d)
    with _writing(tmp / MANIFEST_FILE):
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    for name in os.listdir(tmp):
        with open(tmp / name, "rb") as fh:
            os.fsync(fh.fileno())


def read_metadata_rows(folder: str | Path, ids: Sequence[int]) -> pd.DataFrame:
    """Metadata rows of ``ids`` (in that order) without loading the whole table when it is Parquet.

    For a gallery of millions: only the row groups holding ``ids`` are decoded. The table's
    sha256 is not checked here (it would read the whole file); ``load_index`` checks it.
    """
    manifest = read_manifest(folder)
    path = metadata_path(folder, manifest)
    wanted = np.asarray(list(ids), dtype=np.int64)
    if len(wanted) and (wanted.min() < 0 or wanted.max() >= manifest["count"]):
        bad = int(wanted[(wanted < 0) | (wanted >= manifest["count"])][0])
        raise IndexFormatError(f"{folder}: no entry with id {bad} (ids are 0..{manifest['count'] - 1})")
    if path.suffix != ".parquet":
        return _read_metadata(path).iloc[wanted].reset_index(drop=True)
    if not path.is_file():
        raise IndexFormatError(f"{path}: missing")
    if not len(wanted):
        return _read_parquet(path).iloc[:0]
    return _read_parquet(path, wanted, int(manifest.get("metadata_row_group", METADATA_ROW_GROUP)))
