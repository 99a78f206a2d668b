"""Removing entries: ids stay stable, searches skip removed ones (checked against brute force), appends stay live."""
import numpy as np
import pandas as pd
import pytest

from retrieval.errors import IndexFormatError
from retrieval.gallery import open_gallery
from retrieval.index import REMOVED, build_index, remove_entries


def unit(rng, n, d=8):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_removed_entries_are_skipped_and_ids_stay_stable(tmp_path):
    rng = np.random.default_rng(0)
    x, q = unit(rng, 30), unit(rng, 5)
    folder = tmp_path / "idx"
    build_index(x, pd.DataFrame({"path": [f"{i}.png" for i in range(30)], "label": "a"}), folder,
                manifest_extra={"checkpoint_sha256": "0" * 64})
    gone = [3, 17, 29]
    manifest = remove_entries(folder, gone)
    assert manifest["removed"] == 3
    gallery = open_gallery(folder)
    assert gallery.count == 27 and not gallery.is_live(17) and gallery.is_live(16)
    assert gallery.metadata.loc[4, "path"] == "4.png"  # ids keep naming the same image
    scores, ids = gallery.search(q, 10)
    live = np.setdiff1d(np.arange(30), gone)
    brute = live[np.argsort(-(q @ x[live].T), axis=1)[:, :10]]
    np.testing.assert_array_equal(ids, brute)
    np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, brute, axis=1), atol=1e-5)

    build_index(unit(rng, 2), pd.DataFrame({"path": ["n0.png", "n1.png"], "label": "b"}), folder, append=True,
                manifest_extra={"checkpoint_sha256": "0" * 64})
    gallery = open_gallery(folder)
    assert gallery.count == 29 and gallery.is_live(30) and gallery.is_live(31)
    assert gallery.metadata[REMOVED].tolist().count(True) == 3
    _, all_ids = gallery.search(q, 40)  # k beyond the live count is clamped to it
    assert all_ids.shape == (5, 29) and not np.isin(all_ids, gone).any() and (all_ids >= 0).all()


def test_removing_an_unknown_id_is_refused(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "idx"
    build_index(unit(rng, 4), pd.DataFrame({"path": list("abcd")}), folder)
    with pytest.raises(IndexFormatError, match="no entry with id 4"):
        remove_entries(folder, [4])
    assert open_gallery(folder).count == 4
