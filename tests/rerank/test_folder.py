"""DBA stored in an index folder: beside the untouched originals, recorded in the manifest, undone cleanly."""
import json

import numpy as np
import pandas as pd

from retrieval.files import sha256_file
from retrieval.gallery import open_gallery
from retrieval.index import build_index
from retrieval.rerank import GalleryAccess, augment, gallery_access, rerank_search, save_dba, undo_dba


def _build(folder, x, append=False):
    meta = pd.DataFrame({"path": [f"{i}.png" for i in range(len(x))], "label": ["a"] * len(x)})
    build_index(x, meta, folder, factory="Flat", save_embeddings=True, append=append)


def test_save_use_and_undo(points, tmp_path):
    x, _ = points
    folder = tmp_path / "idx"
    _build(folder, x)
    originals = {name: sha256_file(folder / name) for name in ("index.faiss", "embeddings.npy")}
    before = rerank_search(x[:20], folder, 5, "none")

    record = save_dba(folder, 3, 3.0)
    assert record["name"] == "dba" and record["n"] == 3 and record["alpha"] == 3.0 and record["rows"] == len(x)
    assert json.loads((folder / "manifest.json").read_text())["augmentation"] == record
    np.testing.assert_allclose(np.load(folder / "dba.npy"), augment(GalleryAccess(x), 3, 3.0), atol=1e-6)
    assert {name: sha256_file(folder / name) for name in originals} == originals  # the originals stay

    access = gallery_access(open_gallery(folder))
    assert isinstance(access.cache[("dba", 3, 3.0)], np.memmap)  # picked up, not recomputed
    got = rerank_search(x[:20], access, 5, "dba:n=3,alpha=3")
    want = rerank_search(x[:20], x, 5, "dba:n=3,alpha=3")
    np.testing.assert_array_equal(got[1], want[1])

    undo_dba(folder)
    assert "augmentation" not in json.loads((folder / "manifest.json").read_text())
    assert not (folder / "dba.npy").exists()
    assert {name: sha256_file(folder / name) for name in originals} == originals
    after = rerank_search(x[:20], folder, 5, "none")
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[0], before[0])
    assert gallery_access(open_gallery(folder)).cache == {}
    undo_dba(folder)  # nothing stored: nothing to do


def test_a_stale_record_is_ignored(points, tmp_path):
    x, _ = points
    folder = tmp_path / "idx"
    _build(folder, x[:150])
    save_dba(folder, 2, 3.0)
    _build(folder, x[150:], append=True)  # the gallery grew: the stored augmentation no longer fits
    access = gallery_access(open_gallery(folder))
    assert access.cache == {}
    got = rerank_search(x[:10], access, 5, "dba:n=2")
    np.testing.assert_array_equal(got[1], rerank_search(x[:10], x, 5, "dba:n=2")[1])
