"""A checkpoint and its gallery index, as the commands, benchmarks and the service use them.

``open_embedder`` loads a checkpoint's model with its test transform as an ``Embedder``
(``retrieval.embed``: device, precision, memory format), which turns an image table
(``retrieval.data.tables``) or a dataset into embeddings;
``open_gallery`` opens an index folder and refuses one built by another model; ``Gallery``
searches it and turns FAISS ids into result rows; ``build_gallery`` writes (or appends to) a
folder with the checkpoint's provenance in its manifest.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .config import to_dict
from .embed import Embedder
from .index import REMOVED, build_index, check_compatible, load_index, search, set_search_params
from .schema import Config

log = logging.getLogger(__name__)


class CheckpointEmbedder(Embedder):
    """A checkpoint's network in eval mode as an ``Embedder``, with its config, file, sha256 and test transform."""

    def __init__(self, model: torch.nn.Module, cfg: Config, checkpoint: Path, sha256: str, device: torch.device,
                 batch_size: int, workers: int = 2, precision: str = "auto", runtime: str = "torch",
                 compile: bool = False):
        from .data import build_transforms
        from .execution import COMPILE_BACKEND

        super().__init__(model.eval(), device, precision, batch_size=batch_size, workers=workers,
                         transform=build_transforms(cfg.data, train=False), runtime=runtime,
                         compile=COMPILE_BACKEND if compile else None)
        self.cfg, self.checkpoint, self.sha256 = cfg, Path(checkpoint), sha256

    @property
    def dim(self) -> int:
        return int(self.cfg.model.embedding_dim)

    def manifest_fields(self, source: str) -> dict:
        """What an index folder records of the model that embedded it (``check_compatible`` reads the hash)."""
        return {"checkpoint": str(self.checkpoint.resolve()), "checkpoint_sha256": self.sha256, "source": source,
                "image_size": self.cfg.data.image_size, "config": to_dict(self.cfg)}


def open_embedder(checkpoint: str | Path, device: str = "auto", batch_size: int | None = None, workers: int = 2,
                  precision: str = "auto", device_flag: str = "--device", runtime: str = "torch",
                  compile: bool = False) -> CheckpointEmbedder:
    """Load ``checkpoint`` (weights_only) on ``device``; batch_size defaults to the checkpoint's eval.batch_size.

    runtime, compile: how the network runs (``retrieval.execution``: torch or onnxruntime; torch.compile).
    """
    from .checkpoint import load_model
    from .files import sha256_file
    from .runtime import resolve_device

    dev = resolve_device(device, flag=device_flag)
    model, cfg, _ = load_model(checkpoint, dev)
    return CheckpointEmbedder(model, cfg, Path(checkpoint), sha256_file(checkpoint), dev,
                              batch_size or cfg.eval.batch_size, workers, precision, runtime, compile)


@dataclass
class Gallery:
    """An index folder opened for search: FAISS index, metadata rows (row i = id i), manifest."""
    folder: Path
    index: Any
    metadata: pd.DataFrame
    manifest: dict

    def __post_init__(self) -> None:
        removed = self.metadata[REMOVED].astype(bool).to_numpy() if REMOVED in self.metadata.columns else None
        self.removed_ids = np.flatnonzero(removed) if removed is not None else np.empty(0, np.int64)
        self._removed = set(self.removed_ids.tolist())

    @property
    def count(self) -> int:
        """Live entries (removed ones excluded)."""
        return int(self.index.ntotal) - len(self.removed_ids)

    def is_live(self, item_id: int) -> bool:
        return 0 <= item_id < self.index.ntotal and item_id not in self._removed

    def check_model(self, embedder: CheckpointEmbedder) -> None:
        """IndexFormatError unless ``embedder``'s checkpoint built this index (dimension, sha256)."""
        check_compatible(self.manifest, self.folder, embedder.dim, embedder.sha256)

    def search(self, embeddings: np.ndarray, k: int, nprobe: int | None = None,
               ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores (Nq, k), ids (Nq, k)) of the k nearest live items; missing hits have id -1 and score -inf.

        Removed entries are skipped by searching k + (number removed) and dropping them, which works
        for every index type (few removals are the service's case; a rebuild compacts many).
        """
        set_search_params(self.index, nprobe=nprobe, ef_search=ef_search)
        if not len(self.removed_ids):
            return search(self.index, embeddings, k)  # clamps k to the gallery, with a warning
        k = min(k, max(1, self.count))
        scores, ids = search(self.index, embeddings, min(self.index.ntotal, k + len(self.removed_ids)))
        keep = ~np.isin(ids, self.removed_ids)
        out_s = np.full((len(ids), k), -np.inf, np.float32)
        out_i = np.full((len(ids), k), -1, np.int64)
        for q in range(len(ids)):
            live = np.flatnonzero(keep[q])[:k]
            out_s[q, :len(live)], out_i[q, :len(live)] = scores[q, live], ids[q, live]
        return out_s, out_i

    def results(self, scores: np.ndarray, ids: np.ndarray) -> list[pd.DataFrame]:
        """Per query: rank, score, gallery_id, gallery_path, gallery_label (missing approximate hits dropped)."""
        paths, labels = self.metadata["path"].to_numpy(), self.metadata["label"].to_numpy()
        out = []
        for q in range(len(ids)):
            found = ids[q] >= 0
            gid = ids[q][found]
            out.append(pd.DataFrame({"rank": np.flatnonzero(found) + 1, "score": scores[q][found].astype(float),
                                     "gallery_id": gid, "gallery_path": paths[gid], "gallery_label": labels[gid]}))
        return out


def open_gallery(folder: str | Path, embedder: CheckpointEmbedder | None = None) -> Gallery:
    """Load an index folder; with ``embedder``, refuse it unless that checkpoint built it (dimension, sha256)."""
    gallery = Gallery(Path(folder), *load_index(folder))
    if embedder is not None:
        gallery.check_model(embedder)
    return gallery


def build_gallery(embedder: CheckpointEmbedder, embeddings: np.ndarray, metadata: pd.DataFrame, out_dir: str | Path,
                  source: str, factory: str = "Flat", overwrite: bool = False, append: bool = False,
                  save_embeddings: bool = False) -> dict:
    """Write (or append to) the index folder ``out_dir`` with ``embedder``'s provenance; returns its manifest."""
    return build_index(embeddings, metadata, out_dir, factory=factory, manifest_extra=embedder.manifest_fields(source),
                       overwrite=overwrite, append=append, save_embeddings=save_embeddings)
