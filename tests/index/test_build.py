"""Index folder: build / load / search / append, factory types, and every broken-folder error."""
import json
import logging

import faiss
import numpy as np
import pandas as pd
import pytest

from retrieval.errors import ConfigError, DataError, IndexFormatError
from retrieval.index import (EMBEDDINGS_FILE, INDEX_FILE, MANIFEST_FILE, METADATA_FILE, build_index,
                             check_compatible, load_index, search, set_search_params)


def unit(n, d=16, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def meta(n, start=0, labels=None):
    labels = [i % 5 for i in range(n)] if labels is None else labels
    return pd.DataFrame({"path": [f"/img/{start + i}.jpg" for i in range(n)], "label": labels,
                         "split": "gallery"})


EXTRA = {"checkpoint": "a.pt", "checkpoint_sha256": "a" * 64, "config": {"model": {"embedding_dim": 16}}}


def build(tmp_path, x, name="idx", **kw):
    kw.setdefault("manifest_extra", EXTRA)
    return build_index(x, meta(len(x)), tmp_path / name, **kw)


@pytest.mark.parametrize("factory", ["Flat", "IVF4,Flat", "HNSW16"])
def test_round_trip_each_vector_finds_itself(tmp_path, factory):
    x = unit(300)
    manifest = build(tmp_path, x, factory=factory)
    index, md, loaded = load_index(tmp_path / "idx")
    assert loaded == manifest
    assert (index.ntotal, index.d) == (300, 16)
    set_search_params(index, nprobe=4, ef_search=64)  # IVF: all lists → exact
    scores, ids = search(index, x, 3)
    assert (ids[:, 0] == np.arange(300)).all()
    assert np.allclose(scores[:, 0], 1, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    assert md["path"].iloc[ids[7, 0]] == "/img/7.jpg"


def test_manifest_and_metadata_contents(tmp_path):
    x = unit(10)
    labels = [3, None, "cat", 4.0, 5, 6, 7, 8, 9, 10]
    md = meta(10, labels=labels).assign(extra=range(10))
    build_index(x, md, tmp_path / "idx", manifest_extra=EXTRA)
    manifest = json.loads((tmp_path / "idx" / MANIFEST_FILE).read_text())
    assert manifest["dim"] == 16 and manifest["count"] == 10 and manifest["metric"] == "inner_product"
    assert manifest["factory"] == "Flat" and manifest["normalised"] is True
    assert manifest["checkpoint_sha256"] == "a" * 64 and manifest["config"]["model"]["embedding_dim"] == 16
    assert "faiss-cpu" in manifest["versions"] and manifest["created"]
    _, loaded, _ = load_index(tmp_path / "idx")
    assert list(loaded.columns[:4]) == ["id", "path", "label", "split"] and "extra" in loaded.columns
    assert loaded["label"].tolist()[:4] == ["3", "", "cat", "4"]  # text, "" = unknown, no "4.0"
    assert loaded["id"].tolist() == list(range(10))
    assert not (tmp_path / "idx" / EMBEDDINGS_FILE).exists()


def test_save_embeddings_and_append(tmp_path, caplog):
    x, y = unit(20, seed=1), unit(7, seed=2)
    build(tmp_path, x, save_embeddings=True)
    with caplog.at_level(logging.WARNING):
        manifest = build_index(y, meta(7, start=18), tmp_path / "idx", append=True, manifest_extra=EXTRA)
    assert "2 of 7 images are already" in caplog.text  # /img/18, /img/19 indexed twice
    assert manifest["count"] == 27 and manifest["updated"]
    index, md, _ = load_index(tmp_path / "idx")
    assert index.ntotal == 27 and md["id"].tolist() == list(range(27))
    assert md["path"].iloc[20] == "/img/18.jpg"
    np.testing.assert_array_equal(np.load(tmp_path / "idx" / EMBEDDINGS_FILE), np.concatenate([x, y]))
    _, ids = search(index, y, 1)
    assert (ids[:, 0] == np.arange(20, 27)).all()


def test_append_to_ivf_keeps_its_training(tmp_path):
    build(tmp_path, unit(200), factory="IVF4,Flat")
    build_index(unit(5, seed=9), meta(5), tmp_path / "idx", append=True, manifest_extra=EXTRA)
    index, _, manifest = load_index(tmp_path / "idx")
    assert manifest["factory"] == "IVF4,Flat" and index.ntotal == 205


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("kwargs, error, message", [
    ({"manifest_extra": {**EXTRA, "checkpoint_sha256": "b" * 64}}, IndexFormatError, "aaaaaaaaaaaa"),
    ({"save_embeddings": True}, IndexFormatError, "has no embeddings.npy"),
])
def test_bad_append_leaves_the_folder_alone(tmp_path, kwargs, error, message):
    build(tmp_path, unit(20))
    before = _snapshot(tmp_path / "idx")
    kwargs.setdefault("manifest_extra", EXTRA)
    with pytest.raises(error, match=message):
        build_index(unit(3, seed=5), meta(3), tmp_path / "idx", append=True, **kwargs)
    assert _snapshot(tmp_path / "idx") == before


def test_append_with_other_dimension_is_refused(tmp_path):
    build(tmp_path, unit(20))
    with pytest.raises(IndexFormatError, match="dimension 16 but the model embeds to 8"):
        build_index(unit(3, d=8), meta(3), tmp_path / "idx", append=True, manifest_extra=EXTRA)


def test_existing_folder_needs_overwrite(tmp_path):
    build(tmp_path, unit(20))
    with pytest.raises(FileExistsError, match="--overwrite"):
        build(tmp_path, unit(10))
    build(tmp_path, unit(10), overwrite=True)
    assert load_index(tmp_path / "idx")[0].ntotal == 10


def test_crash_while_writing_keeps_the_old_index(tmp_path, monkeypatch):
    build(tmp_path, unit(20))
    before = _snapshot(tmp_path / "idx")

    def broken_write(index, path):
        open(path, "wb").write(b"half")
        raise OSError("disk full")

    import retrieval.index.folder

    monkeypatch.setattr(retrieval.index.folder, "write_faiss", broken_write)  # writes index.faiss of a folder
    with pytest.raises(OSError, match="disk full"):
        build(tmp_path, unit(10), overwrite=True)
    assert _snapshot(tmp_path / "idx") == before
    # no temporary folder and no writers' lock file left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_too_small_gallery_for_ivf_names_factory_and_need(tmp_path):
    with pytest.raises(DataError, match=r"'IVF64,Flat' needs at least 2,496 .* has 200.*IVF4,Flat"):
        build(tmp_path, unit(200), factory="IVF64,Flat")
    with pytest.raises(DataError, match=r"'IVF4,PQ4' needs at least 9,984 .* 256 centroids per PQ"):
        build(tmp_path, unit(500), factory="IVF4,PQ4")
    assert not (tmp_path / "idx").exists()


def test_unknown_factory_string(tmp_path):
    with pytest.raises(ConfigError, match="'Bogus12'.*not a FAISS factory string"):
        build(tmp_path, unit(20), factory="Bogus12")


def test_embeddings_must_be_normalised_and_match_metadata(tmp_path):
    with pytest.raises(ValueError, match="L2-normalised"):
        build_index(unit(5) * 2, meta(5), tmp_path / "idx")
    with pytest.raises(ValueError, match="4 rows for 5 embeddings"):
        build_index(unit(5), meta(4), tmp_path / "idx")


def test_search_clamps_k_and_ranks_ties_by_id(tmp_path, caplog):
    x = unit(4)
    g = np.concatenate([x[1:2], x[1:2], x[1:2], x[0:1]])  # three exact copies
    index = faiss.IndexFlatIP(16)
    index.add(g)
    with caplog.at_level(logging.WARNING):
        scores, ids = search(index, x[1:2], 10)
    assert "clamped to 4" in caplog.text
    assert ids.tolist() == [[0, 1, 2, 3]] and scores.shape == (1, 4)


def test_check_compatible_names_the_mismatch(tmp_path):
    manifest = {"dim": 16, "checkpoint_sha256": "a" * 64, "checkpoint": "old.pt"}
    check_compatible(manifest, tmp_path, 16, "a" * 64)
    with pytest.raises(IndexFormatError, match="dimension 16 but the model embeds to 32"):
        check_compatible(manifest, tmp_path, 32, "a" * 64)
    with pytest.raises(IndexFormatError, match=r"checkpoint sha256 aaaaaaaaaaaa.*old\.pt.*bbbbbbbbbbbb"):
        check_compatible(manifest, tmp_path, 16, "b" * 64)


def _break(folder, how):
    if how == "no folder":
        return folder.parent / "nowhere", "index folder not found"
    if how == "no manifest":
        (folder / MANIFEST_FILE).unlink()
        return folder, "manifest.json: missing"
    if how == "bad manifest":
        (folder / MANIFEST_FILE).write_text("{not json")
        return folder, "manifest.json: not valid JSON"
    if how == "no index":
        (folder / INDEX_FILE).unlink()
        return folder, "index.faiss: missing"
    if how == "truncated index":
        data = (folder / INDEX_FILE).read_bytes()
        (folder / INDEX_FILE).write_bytes(data[: len(data) // 2])
        return folder, "index.faiss: .* bytes but the manifest records .*truncated"
    if how == "truncated, size unknown":
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        del manifest["index_bytes"]
        (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
        data = (folder / INDEX_FILE).read_bytes()
        (folder / INDEX_FILE).write_bytes(data[:100])
        return folder, "index.faiss: FAISS cannot read it"
    if how == "metadata rows":
        md = pd.read_csv(folder / METADATA_FILE)
        md.iloc[:-1].to_csv(folder / METADATA_FILE, index=False)
        return folder, "metadata.csv: 19 rows but index.faiss holds 20"
    if how == "no metadata":
        (folder / METADATA_FILE).unlink()
        return folder, "metadata.csv: missing"
    if how == "manifest count":
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        manifest["count"] = 21
        (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
        return folder, "20 vectors but manifest.json says 21"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["no folder", "no manifest", "bad manifest", "no index", "truncated index",
                                 "truncated, size unknown", "metadata rows", "no metadata", "manifest count"])
def test_broken_folder_errors_name_the_file(tmp_path, how):
    build(tmp_path, unit(20))
    folder, message = _break(tmp_path / "idx", how)
    with pytest.raises(IndexFormatError, match=message):
        load_index(folder)
