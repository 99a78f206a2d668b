"""build_index command: every gallery source, append, index types, and each bad input (exit 2, nothing written)."""
import json
import shutil

import numpy as np
import pytest

from retrieval.checkpoint import load_model
from retrieval.cli.build_index import main
from retrieval.data import build_transforms
from retrieval.data import table_from_folder
from retrieval.embed import Embedder
from retrieval.files import sha256_file
from retrieval.index import load_index


def run(capsys, *argv):
    # fp32 and one batch: the bf16 path (slow first call per shape on CPU) is covered by tests/test_embed.py
    code = main([str(a) for a in argv] + ["--workers", "0", "-q", "--precision", "fp32", "--batch-size", "16"])
    out, err = capsys.readouterr()
    return code, out, err


def test_images_folder_round_trip_with_embeddings(assets, tmp_path, capsys):
    out_dir = tmp_path / "idx"
    code, out, err = run(capsys, "--checkpoint", assets["ckpt"], "--out", out_dir, "--images", assets["gallery"],
                         "--folder-labels", "--save-embeddings")
    assert code == 0, err
    assert "indexed 9 images" in out
    index, meta, manifest = load_index(out_dir)
    assert index.ntotal == 9 and manifest["dim"] == 16 and manifest["factory"] == "Flat"
    assert manifest["checkpoint_sha256"] == sha256_file(assets["ckpt"])
    assert manifest["config"]["model"]["backbone"] == "resnet18"
    assert meta["label"].tolist() == [f"class{c}" for c in range(3) for _ in range(3)]
    model, cfg, _ = load_model(assets["ckpt"], "cpu")
    embedder = Embedder(model, "cpu", "fp32", workers=0, transform=build_transforms(cfg.data, train=False))
    ref = embedder.embed_table(table_from_folder(assets["gallery"]), progress=False)
    stored = np.load(out_dir / "embeddings.npy")
    np.testing.assert_allclose(stored, ref, atol=1e-5)
    _, ids = index.search(stored, 1)
    assert (ids[:, 0] == np.arange(9)).all()  # every gallery image finds itself first


def test_csv_source_append_and_refusals(assets, tmp_path, capsys):
    out_dir = tmp_path / "idx"
    assert run(capsys, "--checkpoint", assets["ckpt"], "--out", out_dir, "--csv", assets["csv"])[0] == 0
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["source"].startswith("csv:") and manifest["normalised"] is True
    assert manifest["metric"] == "inner_product" and manifest["count"] == 9
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}

    code, _, err = run(capsys, "--checkpoint", assets["ckpt"], "--out", out_dir, "--csv", assets["csv"])
    assert code == 2 and "already exists" in err and "--overwrite" in err

    code, _, err = run(capsys, "--checkpoint", assets["other"], "--out", out_dir, "--csv", assets["csv"], "--append")
    assert code == 2 and "checkpoint sha256" in err and "rebuild" in err
    code, _, err = run(capsys, "--checkpoint", assets["narrow"], "--out", out_dir, "--csv", assets["csv"], "--append")
    assert code == 2 and "dimension 16 but the model embeds to 8" in err
    code, _, err = run(capsys, "--checkpoint", assets["ckpt"], "--out", out_dir, "--csv", assets["csv"], "--append",
                       "--index-type", "HNSW8")
    assert code == 2 and "'Flat' index" in err
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before

    single = tmp_path / "one.csv"
    single.write_text(f"path,label\n{assets['paths'][0]},new\n")
    code, out, _ = run(capsys, "--checkpoint", assets["ckpt"], "--out", out_dir, "--csv", single, "--append")
    assert code == 0 and "added 1 images" in out and "10 entries" in out
    index, meta, _ = load_index(out_dir)
    assert index.ntotal == 10 and meta["label"].iloc[-1] == "new"


def test_dataset_config_source(assets, tmp_path, capsys):
    config = tmp_path / "data.yaml"
    config.write_text(f"data:\n  name: folder\n  root: {assets['gallery']}\n  image_size: 64\n  resize: 64\n")
    code, out, err = run(capsys, "--checkpoint", assets["ckpt"], "--out", tmp_path / "idx", "--dataset-config",
                         config, "--index-type", "HNSW8")
    assert code == 0, err
    _, meta, manifest = load_index(tmp_path / "idx")
    # folder without split sub-folders: the first half of the classes train, the rest are the test split
    assert set(meta["split"]) == {"test"} and len(meta) == 3 and set(meta["label"]) == {"class2"}
    assert manifest["factory"] == "HNSW8" and manifest["image_size"] == 32  # the checkpoint's size, not 64
    code, _, err = run(capsys, "--checkpoint", assets["ckpt"], "--out", tmp_path / "idx2", "--dataset-config",
                       config, "--split", "gallery")
    assert code == 2 and "--split gallery" in err and "test, train" in err


@pytest.mark.parametrize("extra, message", [
    (["--index-type", "IVF64,Flat"], "'IVF64,Flat' needs at least 2,496 gallery vectors"),
    (["--index-type", "Nonsense7"], "'Nonsense7': not a FAISS factory string"),
])
def test_bad_index_type_fails_before_embedding(assets, tmp_path, capsys, extra, message):
    code, _, err = run(capsys, "--checkpoint", assets["ckpt"], "--out", tmp_path / "idx", "--images",
                       assets["gallery"], *extra)
    assert code == 2 and message in err
    assert not (tmp_path / "idx").exists()


def test_bad_gallery_inputs(assets, tmp_path, capsys):
    out_dir = tmp_path / "idx"
    missing = tmp_path / "missing.csv"
    missing.write_text("path\nnowhere.png\n")
    code, _, err = run(capsys, "--checkpoint", assets["ckpt"], "--out", out_dir, "--csv", missing)
    assert code == 2 and "nowhere.png" in err

    broken = tmp_path / "broken"
    shutil.copytree(assets["gallery"], broken)
    (broken / "class0" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code, _, err = run(capsys, "--checkpoint", assets["ckpt"], "--out", out_dir, "--images", broken)
    assert code == 2 and "class0/1.png" in err and "Traceback" not in err

    code, _, err = run(capsys, "--checkpoint", tmp_path / "none.pt", "--out", out_dir, "--images", assets["gallery"])
    assert code == 2 and "checkpoint not found" in err
    assert not out_dir.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".idx")] == []
