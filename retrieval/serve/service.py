"""What ``retrieval-serve`` keeps loaded: a checkpoint, its index folder, and the operations on them.

Searches read an immutable snapshot (``Gallery``) taken once per request; a write (add,
remove) goes through the index folder's writer lock, rewrites the folder atomically (so it is
durable when the call returns), then swaps in a freshly loaded snapshot. Searches running
meanwhile finish on the old snapshot: none sees a half-applied write.

Writes hold the folder's writer lock (``retrieval.files.writer_lock``, the one ``build_index.py
--append`` takes) and first reload the folder when its manifest changed under the service, so
the ids a write answers are the ids written, whoever else appended meanwhile. Reads reload too
when the manifest file was replaced (one stat per request), so they see another process's appends.

Uploaded gallery images are kept in ``<index>.uploads/`` beside the index folder, named by
their sha256, written atomically before the index refers to them; a removed item's upload is
deleted with it (unless another live item is the same picture), and uploads no live item
refers to are collected at start-up.

Clients see a gallery file's name only (``expose_paths`` off, the default): absolute paths
tell a stranger the server's layout and user names.

Re-ranking (retrieval/rerank, docs/reranking.md) runs over the current snapshot's vectors; what
a method computes once per gallery (DBA's augmented vectors) is kept until the gallery changes.
A request may name another method or parameters, within bounds (``RERANK_LIMITS``), but DBA only
with the parameters the service started with: each other choice would redo the whole gallery.
"""
from __future__ import annotations

import hashlib
import logging
import mimetypes
import os
import re
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..data import decode_image
from ..data.transforms import build_eval_array
from ..errors import ConfigError, IndexFormatError
from ..files import atomic_write_bytes, writer_lock
from ..embed import CheckpointEmbedder, open_embedder
from ..gallery import Gallery, build_gallery, open_gallery
from ..index import MANIFEST_FILE, read_manifest, remove_entries
from ..rerank import GalleryAccess, RerankSpec, gallery_access, parse_rerank, rerank_search
from .batcher import MicroBatcher

log = logging.getLogger(__name__)

# Pillow's default MAX_IMAGE_PIXELS (~89 M) admits 350 MB of decoded RGB per upload; a query needs far less.
DEFAULT_MAX_PIXELS = 40_000_000
# Queries per request, uploaded files and JSON vectors alike: one request's work stays bounded.
MAX_QUERIES = 16
# How uploads are named in <index>.uploads/: sha256 of the content + an image suffix. Only such
# names are ever deleted there (never a temporary, never a file someone else put in the folder).
UPLOAD_NAME = re.compile(r"[0-9a-f]{64}(\.[a-z]{3,4})?")
# The most a request's re-ranking may ask for: its work grows with these (per query, candidates × k1).
RERANK_LIMITS = {"n": 50, "dba_n": 50, "k1": 100, "k2": 100, "candidates": 500}


@dataclass
class Settings:
    checkpoint: Path
    index: Path
    device: str = "auto"
    precision: str = "auto"
    runtime: str = "torch"  # what runs the network: torch | onnxruntime | onnxruntime-int8 (retrieval.execution)
    compile: bool = False  # torch.compile the network (torch runtime)
    max_batch: int = 32  # images per forward pass
    # 0: a forward pass takes every request already queued and starts at once, so a lone query waits
    # for nothing and, under load, requests that arrived during one pass share the next.
    batch_wait_ms: float = 0.0
    max_upload_bytes: int = 10 << 20  # per file
    max_files: int = MAX_QUERIES  # uploaded files or JSON vectors per request
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_k: int = 1000
    token: str | None = None  # bearer token of the write endpoints
    host: str = "127.0.0.1"  # the bound address: a Host header naming it is accepted
    allowed_hosts: tuple[str, ...] = ()  # further Host names (a DNS name the service is reached by)
    cors_origins: tuple[str, ...] = ()  # pages allowed to call the API (and write, with the token if set)
    expose_paths: bool = False  # absolute gallery / checkpoint paths in answers (else file names)
    body_timeout_s: float = 30.0  # longest wait for the next chunk of a request body
    rerank: str = "none"  # default re-ranking of /search and /neighbours (NAME[:k=v,...], docs/reranking.md)


class NotFound(IndexFormatError):
    """An item id that the gallery does not hold (HTTP 404)."""


class RetrievalService:
    """Model + index folder, loaded once; thread-safe search, add, remove."""

    def __init__(self, settings: Settings):
        self.settings = settings
        # Every PyTorch operator of the service runs on the batcher's thread, loading included: one
        # OpenMP team, whose idle workers spin between passes instead of sleeping (serve/batcher.py).
        self.batcher = MicroBatcher(self._forward, settings.max_batch, settings.batch_wait_ms)
        try:
            self.embedder: CheckpointEmbedder = self.run_model(
                open_embedder, settings.checkpoint, settings.device, workers=0, precision=settings.precision,
                runtime=settings.runtime, compile=settings.compile)
            self._array = build_eval_array(self.embedder.cfg.data)  # the test transform, no torch operators
            self._stamp: tuple | None = None
            self.gallery: Gallery = self._load()
            if settings.runtime == "onnxruntime-int8":  # int8 ranges from the gallery's images (retrieval.quantize)
                self.run_model(self.embedder.calibrate_on_table, self.gallery.live_metadata())
            if settings.runtime != "torch" or settings.compile:
                self.run_model(self._warm_up)  # export / quantise / compile now, not on a user's first request
        except BaseException:
            self.batcher.close()
            raise
        self.uploads = settings.index.parent / f"{settings.index.name}.uploads"
        self._write = threading.Lock()
        self.default_rerank = self._bounded(parse_rerank(settings.rerank, "--rerank"), "--rerank")
        self._rerank_lock = threading.Lock()
        self._rerank_base: tuple[Gallery, GalleryAccess] | None = None
        self.started = time.time()
        self.collect_orphan_uploads()
        log.info("serving %s (%d items, dim %d, %s) with %s", settings.index, self.gallery.count,
                 self.embedder.dim, self.gallery.manifest["factory"], settings.checkpoint)

    def close(self) -> None:
        self.batcher.close()

    def _warm_up(self) -> None:
        size = int(self.embedder.cfg.data.image_size)
        for batch in sorted({1, self.settings.max_batch}):  # compiled graphs may specialise on the batch size
            self.embedder.embed(torch.zeros(batch, 3, size, size))

    def _forward(self, images: torch.Tensor) -> np.ndarray:
        return self.embedder.embed(images).numpy()

    # -- reading -------------------------------------------------------------------------------

    def decode(self, data: bytes, name: str) -> Image.Image:
        """An upload as RGB, through the same guarded decoder as training (ImageError naming ``name``)."""
        return decode_image(data, name, max_pixels=self.settings.max_pixels)

    def run_model(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` on the batcher's thread, where the service runs PyTorch (serve/batcher.py)."""
        return self.batcher.call(fn, *args, **kwargs).result()

    def preprocess(self, picture: Image.Image) -> torch.Tensor:
        """The checkpoint's test transform: (3, H, W) float32, computed without PyTorch operators, so
        that the request threads that call it start no OpenMP team of their own (serve/batcher.py)."""
        return torch.from_numpy(self._array(picture))

    def batch(self, pictures: list[Image.Image]) -> torch.Tensor:
        """The pictures' test transforms stacked: (n, 3, H, W), without PyTorch operators."""
        return torch.from_numpy(np.stack([self._array(p) for p in pictures]))

    def embed(self, pictures: list[Image.Image]) -> np.ndarray:
        """(n, D) embeddings of decoded pictures, through the micro-batcher."""
        return self.batcher.submit(self.batch(pictures)).result()

    def check_k(self, k: int) -> int:
        if k < 1 or k > self.settings.max_k:
            raise ConfigError(f"k: expected 1 … {self.settings.max_k}, got {k}")
        return k

    def search(self, embeddings: np.ndarray, k: int, nprobe: int | None = None,
               rerank: RerankSpec | None = None) -> list[list[dict]]:
        """Per query, its hits (rank, id, score, label, path) among the k nearest live items.

        rerank: a second stage (``rerank_spec``), the service's default when None. A gallery
        item's neighbours include the item itself, re-ranked or not (it is the query here).
        Built for all queries at once (one gather over the (queries, k) id array): a request of
        MAX_QUERIES queries at the largest k is one numpy pass, not MAX_QUERIES pandas frames.
        """
        gallery = self.current()  # one snapshot for the whole request
        k = self.check_k(k)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedder.dim:
            raise ConfigError(f"embedding: expected {self.embedder.dim} numbers per query, got shape "
                              f"{tuple(embeddings.shape)}")
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        if not np.all(np.isfinite(norms)) or (norms == 0).any():
            raise ConfigError("embedding: expected finite, non-zero numbers")
        queries = (embeddings / norms).astype(np.float32)
        rerank = self.default_rerank if rerank is None else rerank
        if rerank.name != "none":
            scores, ids = rerank_search(queries, self._rerank_access(gallery, nprobe), k, rerank)
        else:
            scores, ids = gallery.search(queries, k, nprobe)
        return self._hits(gallery, scores, ids)

    def rerank_spec(self, text: str | None, key: str = "rerank") -> RerankSpec | None:
        """``NAME[:k=v,...]`` checked against RERANK_LIMITS (ConfigError naming ``key``); None for None."""
        if text is None:
            return None
        spec = self._bounded(parse_rerank(text, key), key)
        if spec.method.prepare is not None and spec != self.default_rerank:
            raise ConfigError(f"{key} {spec}: DBA re-computes every gallery vector; this service prepared "
                              f"'{self.default_rerank}' (restart it with --rerank to choose other DBA parameters)")
        return spec

    @staticmethod
    def _bounded(spec: RerankSpec, key: str) -> RerankSpec:
        for arg, value in spec.args.items():
            if arg in RERANK_LIMITS and value > RERANK_LIMITS[arg]:
                raise ConfigError(f"{key} {spec.name}: {arg} must be <= {RERANK_LIMITS[arg]} here, got {value}")
        return spec

    def _rerank_access(self, gallery: Gallery, nprobe: int | None) -> GalleryAccess:
        """The snapshot's vectors and once-per-gallery cache (DBA), searched with this request's ``nprobe``."""
        with self._rerank_lock:
            if self._rerank_base is None or self._rerank_base[0] is not gallery:
                self._rerank_base = (gallery, gallery_access(gallery))
            base = self._rerank_base[1]
        return GalleryAccess(base.vectors, lambda q, k: gallery.search(q, k, nprobe), base.removed, base.cache)

    def explain(self, query: torch.Tensor, item_id: int) -> dict:
        """Why ``query`` (3, H, W) transformed) and gallery item ``item_id`` match: retrieval/explain.py's maps.

        Maps at the feature-map size (h, w), the score split by branch, and which branches are exact.
        """
        from ..explain import explain_pair

        data, _, path = self.item_file(item_id)
        result = self.preprocess(self.decode(data, path))
        e = self.run_model(explain_pair, self.embedder.model, query, result)
        return {"score": float(e.score), "shares": {b: float(v) for b, v in e.shares.items()},
                "exact": {b: bool(v) for b, v in e.exact.items()}, "note": e.note,
                "query_map": np.asarray(e.query_map, dtype=np.float64).round(8).tolist(),
                "result_map": np.asarray(e.result_map, dtype=np.float64).round(8).tolist()}

    def _hits(self, gallery: Gallery, scores: np.ndarray, ids: np.ndarray) -> list[list[dict]]:
        found = ids >= 0  # approximate indexes may return fewer than k
        safe = np.where(found, ids, 0)
        paths = gallery.metadata["path"].to_numpy()[safe]
        labels = gallery.metadata["label"].to_numpy()[safe]
        ranks = np.cumsum(found, axis=1)
        return [[{"rank": int(ranks[q, j]), "id": int(ids[q, j]), "score": float(scores[q, j]),
                  "label": str(labels[q, j]), "path": self.shown_path(paths[q, j])}
                 for j in np.flatnonzero(found[q])] for q in range(len(ids))]

    def shown_path(self, path: str) -> str:
        """What a client is told of a server path: all of it with ``expose_paths``, else its file name."""
        return str(path) if self.settings.expose_paths else os.path.basename(str(path))

    def _row(self, item_id: int) -> dict:
        gallery = self.current()
        if not gallery.is_live(item_id):
            raise NotFound(f"no item with id {item_id}")
        row = gallery.metadata.iloc[item_id]
        return {"id": int(item_id), "path": str(row["path"]), "label": str(row.get("label", "")),
                "split": str(row.get("split", ""))}

    def item(self, item_id: int) -> dict:
        """The metadata row of a live item, path as ``shown_path`` (NotFound otherwise)."""
        row = self._row(item_id)
        return {**row, "path": self.shown_path(row["path"])}

    def item_file(self, item_id: int) -> tuple[bytes, str, str]:
        """(bytes, media type, path) of a live item's image: only the regular file recorded in the index.

        The last path component is opened with O_NOFOLLOW, so a gallery file replaced by a
        symlink (to /etc/passwd, say) is refused, and the type is checked on the open file, so
        a directory or FIFO put in its place is refused too (NotFound, a 404).
        """
        path = self._row(item_id)["path"]
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as err:
            why = "is a symbolic link" if os.path.islink(path) else f"cannot be opened ({err.strerror})"
            raise NotFound(f"item {item_id}: its image file {why}; only regular files are served") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise NotFound(f"item {item_id}: its image file is not a regular file on the server")
        with os.fdopen(fd, "rb") as fh:
            data = fh.read()
        return data, mimetypes.guess_type(path)[0] or "application/octet-stream", path

    def item_embedding(self, item_id: int) -> np.ndarray:
        """The stored vector of a live item (reconstructed from the index) — or its image embedded again."""
        self._row(item_id)
        try:
            # np.asarray: once faiss.contrib.torch_utils is imported (pytorch-metric-learning's inference
            # module does), FAISS's reconstruct returns a torch tensor
            return np.asarray(self.gallery.index.reconstruct(int(item_id)), dtype=np.float32)[None, :]
        except RuntimeError:  # indexes without reconstruction (e.g. some IVF-PQ layouts): embed the image
            data, _, path = self.item_file(item_id)
            return self.embed([self.decode(data, path)])

    def items(self, offset: int, limit: int) -> tuple[int, list[dict]]:
        gallery = self.current()
        live = np.delete(np.arange(gallery.index.ntotal), gallery.removed_ids) if len(gallery.removed_ids) \
            else range(gallery.index.ntotal)
        return len(live), [self.item(int(i)) for i in live[offset:offset + limit]]

    def current(self) -> Gallery:
        """The snapshot to read, reloaded first when another process rewrote the folder (one stat per call).

        A write in progress (this process's) reloads anyway, so a read never waits for one; a
        folder caught mid-swap by another writer is read again on a later call.
        """
        if self._manifest_stamp() != self._stamp and self._write.acquire(blocking=False):
            try:
                self._refresh()
            except IndexFormatError as err:
                log.warning("%s: not reloaded this time (%s)", self.settings.index, err)
            finally:
                self._write.release()
        return self.gallery

    def _manifest_stamp(self) -> tuple | None:
        try:
            st = os.stat(self.settings.index / MANIFEST_FILE)  # a rewrite renames a new folder in: a new inode
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _load(self) -> Gallery:
        self._stamp = self._manifest_stamp()  # before loading: a change during the load is seen next time
        return open_gallery(self.settings.index, self.embedder)

    # -- writing -------------------------------------------------------------------------------

    def _refresh(self) -> None:
        """Reload the folder if another writer (``build_index.py --append``) changed it since it was loaded.

        Writes call it under the writer lock, so the folder cannot change again before the write.
        """
        stamp = self._manifest_stamp()
        if read_manifest(self.settings.index) != self.gallery.manifest:
            log.info("%s changed on disk since it was loaded: reloading it", self.settings.index)
            self.gallery = self._load()
        else:
            self._stamp = stamp  # touched, not changed: no need to read it again

    def _store_upload(self, data: bytes, name: str) -> Path:
        suffix = Path(name).suffix.lower() if Path(name).suffix.lower() in (".jpg", ".jpeg", ".png", ".webp",
                                                                             ".bmp", ".gif", ".tif", ".tiff") else ""
        path = self.uploads / f"{hashlib.sha256(data).hexdigest()}{suffix}"
        if not path.exists():
            atomic_write_bytes(path, data)
        return path

    def add(self, files: list[tuple[bytes, str]], labels: list[str]) -> list[int]:
        """Add uploaded images (decoded first: a bad one refuses the whole request); returns their new ids."""
        pictures = [self.decode(data, name) for data, name in files]
        embeddings = self.embed(pictures)
        with self._write, writer_lock(self.settings.index, "index writer"):
            self._refresh()
            paths = [self._store_upload(data, name) for data, name in files]
            table = pd.DataFrame({"path": [str(p) for p in paths], "label": labels, "split": "upload"})
            manifest = build_gallery(self.embedder, embeddings, table, self.settings.index,
                                     source="retrieval-serve", append=True)
            self.gallery = self._load()
        return list(range(manifest["count"] - len(files), manifest["count"]))  # appended last, under the lock

    def remove(self, item_id: int) -> None:
        with self._write, writer_lock(self.settings.index, "index writer"):
            self._refresh()
            path = self._row(item_id)["path"]  # NotFound for an unknown or already removed id
            remove_entries(self.settings.index, [item_id])
            self.gallery = self._load()
            if self._own_upload(path) and path not in self._live_paths():
                Path(path).unlink(missing_ok=True)

    def _own_upload(self, path: str | Path) -> bool:
        """True for a file name this service gives uploads, directly inside its uploads folder."""
        path = Path(path)
        return os.path.abspath(path.parent) == os.path.abspath(self.uploads) and bool(UPLOAD_NAME.fullmatch(path.name))

    def _live_paths(self) -> set[str]:
        gallery = self.gallery
        paths = gallery.metadata["path"].to_numpy()
        return set(np.delete(paths, gallery.removed_ids).tolist())

    def collect_orphan_uploads(self) -> list[Path]:
        """Delete uploads no live item refers to (left by removals of earlier versions, or a crash mid-add)."""
        if not self.uploads.is_dir():
            return []
        with self._write, writer_lock(self.settings.index, "index writer"):  # no add is between store and index
            self._refresh()
            live = {os.path.abspath(p) for p in self._live_paths()}
            orphans = [p for p in self.uploads.iterdir() if self._own_upload(p) and not p.is_symlink()
                       and p.is_file() and os.path.abspath(p) not in live]
            for path in orphans:
                path.unlink(missing_ok=True)
        if orphans:
            log.info("%s: removed %d upload%s no live item refers to", self.uploads, len(orphans),
                     "" if len(orphans) == 1 else "s")
        return orphans

    def stats(self) -> dict:
        gallery = self.gallery
        return {"count": gallery.count, "removed": int(len(gallery.removed_ids)), "dim": self.embedder.dim,
                "index_type": gallery.manifest["factory"], "checkpoint": self.shown_path(self.settings.checkpoint),
                "checkpoint_sha256": self.embedder.sha256, "uptime_s": round(time.time() - self.started, 1),
                "forward_batches": self.batcher.batches, "images_embedded": self.batcher.items}
