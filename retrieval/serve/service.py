"""What ``retrieval-serve`` keeps loaded: a checkpoint, its index folder, and the operations on them.

Searches read an immutable snapshot (``Gallery``) taken once per request; a write (add,
remove) goes through the index folder's writer lock, rewrites the folder atomically (so it is
durable when the call returns), then swaps in a freshly loaded snapshot. Searches running
meanwhile finish on the old snapshot: none sees a half-applied write.

Uploaded gallery images are kept in ``<index>.uploads/`` beside the index folder, named by
their sha256, written atomically before the index refers to them.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..data import decode_image
from ..embed import forward_embeddings
from ..errors import ConfigError, IndexFormatError
from ..files import atomic_write_bytes
from ..gallery import Embedder, Gallery, build_gallery, open_embedder, open_gallery
from ..index import remove_entries
from ..runtime import resolve_precision
from .batcher import MicroBatcher

log = logging.getLogger(__name__)

# Pillow's default MAX_IMAGE_PIXELS (~89 M) admits 350 MB of decoded RGB per upload; a query needs far less.
DEFAULT_MAX_PIXELS = 40_000_000


@dataclass
class Settings:
    checkpoint: Path
    index: Path
    device: str = "auto"
    precision: str = "auto"
    max_batch: int = 32  # images per forward pass
    # 0: a forward pass takes every request already queued and starts at once, so a lone query waits
    # for nothing and, under load, requests that arrived during one pass share the next.
    batch_wait_ms: float = 0.0
    max_upload_bytes: int = 10 << 20  # per file
    max_files: int = 16  # per request
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_k: int = 1000
    token: str | None = None  # bearer token of the write endpoints


class NotFound(IndexFormatError):
    """An item id that the gallery does not hold (HTTP 404)."""


class RetrievalService:
    """Model + index folder, loaded once; thread-safe search, add, remove."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.embedder: Embedder = open_embedder(settings.checkpoint, settings.device, workers=0,
                                                precision=settings.precision)
        self.gallery: Gallery = open_gallery(settings.index, self.embedder)
        self.uploads = settings.index.parent / f"{settings.index.name}.uploads"
        self._dtype = resolve_precision(settings.precision, self.embedder.device, flag="--precision")
        fmt = torch.channels_last if self.embedder.cfg.train.channels_last else torch.contiguous_format
        self._memory_format = fmt
        self.embedder.model.to(memory_format=fmt).eval()
        self.batcher = MicroBatcher(self._forward, settings.max_batch, settings.batch_wait_ms)
        self._write = threading.Lock()
        self.started = time.time()
        log.info("serving %s (%d items, dim %d, %s) with %s", settings.index, self.gallery.count,
                 self.embedder.dim, self.gallery.manifest["factory"], settings.checkpoint)

    def close(self) -> None:
        self.batcher.close()

    def _forward(self, images: torch.Tensor) -> np.ndarray:
        return forward_embeddings(self.embedder.model, images, self.embedder.device, self._dtype,
                                  self._memory_format).numpy()

    # -- reading -------------------------------------------------------------------------------

    def decode(self, data: bytes, name: str) -> Image.Image:
        """An upload as RGB, through the same guarded decoder as training (ImageError naming ``name``)."""
        return decode_image(data, name, max_pixels=self.settings.max_pixels)

    def preprocess(self, picture: Image.Image) -> torch.Tensor:
        """The checkpoint's test transform: (3, H, W) float."""
        return self.embedder.transform(picture)

    def embed(self, pictures: list[Image.Image]) -> np.ndarray:
        """(n, D) embeddings of decoded pictures, through the micro-batcher."""
        return self.batcher.submit(torch.stack([self.preprocess(p) for p in pictures])).result()

    def check_k(self, k: int) -> int:
        if k < 1 or k > self.settings.max_k:
            raise ConfigError(f"k: expected 1 … {self.settings.max_k}, got {k}")
        return k

    def search(self, embeddings: np.ndarray, k: int, nprobe: int | None = None) -> list[pd.DataFrame]:
        """Per query: rank, score, gallery_id, gallery_path, gallery_label of the k nearest live items."""
        gallery = self.gallery  # one snapshot for the whole request
        k = self.check_k(k)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedder.dim:
            raise ConfigError(f"embedding: expected {self.embedder.dim} numbers per query, got shape "
                              f"{tuple(embeddings.shape)}")
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        if not np.all(np.isfinite(norms)) or (norms == 0).any():
            raise ConfigError("embedding: expected finite, non-zero numbers")
        return gallery.results(*gallery.search((embeddings / norms).astype(np.float32), k, nprobe))

    def item(self, item_id: int) -> dict:
        """The metadata row of a live item (NotFound otherwise)."""
        gallery = self.gallery
        if not gallery.is_live(item_id):
            raise NotFound(f"no item with id {item_id}")
        row = gallery.metadata.iloc[item_id].to_dict()
        return {"id": int(item_id), "path": str(row["path"]), "label": str(row.get("label", "")),
                "split": str(row.get("split", ""))}

    def item_embedding(self, item_id: int) -> np.ndarray:
        """The stored vector of a live item (reconstructed from the index) — or its image embedded again."""
        info = self.item(item_id)
        try:
            # np.asarray: once faiss.contrib.torch_utils is imported (pytorch-metric-learning's inference
            # module does), FAISS's reconstruct returns a torch tensor
            return np.asarray(self.gallery.index.reconstruct(int(item_id)), dtype=np.float32)[None, :]
        except RuntimeError:  # indexes without reconstruction (e.g. some IVF-PQ layouts): embed the image
            return self.embedder.embed(pd.DataFrame({"path": [info["path"]]}), progress=False)

    def items(self, offset: int, limit: int) -> tuple[int, list[dict]]:
        gallery = self.gallery
        live = [i for i in range(gallery.index.ntotal) if gallery.is_live(i)] if len(gallery.removed_ids) \
            else range(gallery.index.ntotal)
        chosen = list(live[offset:offset + limit])
        return len(live), [self.item(i) for i in chosen]

    # -- writing -------------------------------------------------------------------------------

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
        with self._write:
            paths = [self._store_upload(data, name) for data, name in files]
            start = int(self.gallery.index.ntotal)
            table = pd.DataFrame({"path": [str(p) for p in paths], "label": labels, "split": "upload"})
            build_gallery(self.embedder, embeddings, table, self.settings.index, source="retrieval-serve",
                          append=True)
            self.gallery = open_gallery(self.settings.index, self.embedder)
        return list(range(start, start + len(files)))

    def remove(self, item_id: int) -> None:
        with self._write:
            self.item(item_id)  # NotFound for an unknown or already removed id
            remove_entries(self.settings.index, [item_id])
            self.gallery = open_gallery(self.settings.index, self.embedder)

    def stats(self) -> dict:
        gallery = self.gallery
        return {"count": gallery.count, "removed": int(len(gallery.removed_ids)), "dim": self.embedder.dim,
                "index_type": gallery.manifest["factory"], "checkpoint": str(self.settings.checkpoint),
                "checkpoint_sha256": self.embedder.sha256, "uptime_s": round(time.time() - self.started, 1),
                "forward_batches": self.batcher.batches, "images_embedded": self.batcher.items}
