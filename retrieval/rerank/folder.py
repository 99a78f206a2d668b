"""Re-ranking over an index folder: its ``GalleryAccess``, and DBA stored beside the original vectors.

DESIGN.md "Re-ranking": DBA changes the gallery vectors, so the folder keeps the originals
(``index.faiss``, ``embeddings.npy`` untouched) and ``dba.npy`` (N, D) float32 beside them;
the manifest's ``augmentation`` says what it holds (method, n, α, file, rows). ``undo_dba``
removes both, leaving the folder as it was built. ``gallery_access`` picks a stored
augmentation up, so a service or ``query.py --rerank dba`` does not recompute it per process.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import IndexFormatError
from ..files import atomic_path, atomic_write_text, writer_lock
from .access import GalleryAccess

if TYPE_CHECKING:
    from ..gallery import Gallery

log = logging.getLogger(__name__)

DBA_FILE = "dba.npy"
MANIFEST = "manifest.json"  # retrieval.index.folder.MANIFEST_FILE (the folder format's own name)


def _manifest(folder: Path) -> dict:
    from ..index import read_manifest

    return read_manifest(folder)


def save_dba(folder: str | Path, n: int, alpha: float, nprobe: int | None = None) -> dict:
    """Compute DBA of the index folder's gallery and store it there; returns the manifest's ``augmentation``."""
    from ..gallery import open_gallery
    from .dba import augment
    from .spec import resolve_rerank

    args = resolve_rerank("dba", {"n": n, "alpha": alpha}).args
    folder = Path(folder)
    with writer_lock(folder, "index writer"):
        gallery = open_gallery(folder)
        vectors = augment(gallery_access(gallery, nprobe=nprobe), args["n"], args["alpha"])
        with atomic_path(folder / DBA_FILE) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, vectors)
        manifest = _manifest(folder)
        manifest["augmentation"] = {"name": "dba", **args, "file": DBA_FILE, "rows": len(vectors),
                                    "source": "the index's own vectors (embeddings.npy or a flat index)"}
        atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    log.info("%s: stored DBA (n=%d, alpha=%g) of %d vectors in %s", folder, args["n"], args["alpha"], len(vectors),
             DBA_FILE)
    return manifest["augmentation"]


def undo_dba(folder: str | Path) -> None:
    """Remove a stored DBA: ``dba.npy`` and the manifest's ``augmentation`` (the originals were never changed)."""
    folder = Path(folder)
    with writer_lock(folder, "index writer"):
        manifest = _manifest(folder)
        if manifest.pop("augmentation", None) is not None:
            atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        (folder / DBA_FILE).unlink(missing_ok=True)


def attach_stored(access: GalleryAccess, folder: str | Path, manifest: dict) -> None:
    """Put a folder's stored DBA vectors (memory-mapped) into ``access.cache``, where ``dba.augmented`` looks first.

    A record that no longer fits the folder (file missing, rows ≠ the index's, e.g. after an
    append) is ignored with a warning: the augmentation is then recomputed when asked for.
    """
    record = manifest.get("augmentation")
    if not record or record.get("name") != "dba":
        return
    path = Path(folder) / record.get("file", DBA_FILE)
    if not path.is_file():
        log.warning("%s: the manifest records a DBA augmentation but the file is missing; ignored", path)
        return
    try:
        vectors = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise IndexFormatError(f"{path}: the manifest records a DBA augmentation, but the file cannot be read "
                               f"({err}); remove it with retrieval.rerank.undo_dba") from None
    if vectors.shape != access.vectors.shape or vectors.dtype != np.float32:
        log.warning("%s: stored DBA holds %s vectors, the index %s; ignored (recomputed when asked for)",
                    path, vectors.shape, access.vectors.shape)
        return
    access.cache[("dba", int(record["n"]), float(record["alpha"]))] = vectors


def gallery_access(gallery: "Gallery", nprobe: int | None = None, ef_search: int | None = None) -> GalleryAccess:
    """A ``GalleryAccess`` over an opened index folder: its index searches, its stored vectors are the rows.

    The rows are ``embeddings.npy`` (memory-mapped) when the folder has it, else the vectors of
    a flat index; an approximate index without ``embeddings.npy`` cannot be re-ranked
    (IndexFormatError saying to build it with ``--save-embeddings``). A DBA stored in the
    folder (``stored.save_dba``) is attached, so it is not recomputed.
    """
    from ..index.exact import is_exact, stored_embeddings

    vectors = stored_embeddings(gallery.folder, gallery.manifest)
    if vectors is None:
        if not is_exact(gallery.index):
            raise IndexFormatError(f"{gallery.folder}: re-ranking needs the gallery vectors, and this "
                                   f"{gallery.manifest.get('factory', '?')} index has no embeddings.npy "
                                   "(build it with --save-embeddings)")
        # np.asarray: once faiss.contrib.torch_utils is imported (pytorch-metric-learning does), FAISS
        # hands back torch tensors
        vectors = np.asarray(gallery.index.reconstruct_n(0, gallery.index.ntotal), dtype=np.float32)
    access = GalleryAccess(vectors, lambda q, k: gallery.search(q, k, nprobe, ef_search),
                           np.asarray(gallery.removed_ids, np.int64))
    attach_stored(access, gallery.folder, gallery.manifest)
    return access
