"""A checkpoint's gallery index, as the commands, benchmarks and the service use it.

An embedder (``retrieval.embed.open_embedder``, or the cached ONNX model of
``retrieval.onnx_cache``) turns images into embeddings; ``open_gallery`` opens an index folder
and refuses one built by another model; ``Gallery`` searches it and turns FAISS ids into result rows; ``build_gallery`` writes (or appends to) a
folder with the checkpoint's provenance in its manifest.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .index import REMOVED, build_index, check_compatible, load_index, search, set_search_params

if TYPE_CHECKING:  # the embedder needs torch; searching a gallery does not
    from .embed import CheckpointEmbedder

log = logging.getLogger(__name__)


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

    def live_metadata(self) -> pd.DataFrame:
        """The metadata rows of the live entries, in id order."""
        if not len(self.removed_ids):
            return self.metadata
        return self.metadata[~np.isin(np.arange(len(self.metadata)), self.removed_ids)]

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
