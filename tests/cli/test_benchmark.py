"""retrieval-benchmark: table, JSON/Markdown, the published column, both protocols, bad input."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval.checkpoint import load_model
from retrieval.cli.benchmark import PUBLISHED_COLUMN, main
from retrieval.config import load_config
from retrieval.data import build_splits
from retrieval.published import CGD_PAPER, published_recall

SYNTHETIC = ["data.synthetic_classes=8", "data.synthetic_per_class=4", "data.synthetic_size=32"]


def run(capsys, *argv):
    code = main([str(a) for a in argv] + ["--workers", "0", "--precision", "fp32", "-q"])
    out, err = capsys.readouterr()
    return code, out, err


def _picture(path, rng):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (24, 24, 3)).astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory):
    """CUB format: classes 1, 2 (train) and 101, 102, 103 (test), 3 images each."""
    root = tmp_path_factory.mktemp("cub") / "CUB_200_2011"
    rng = np.random.default_rng(0)
    images, labels = [], []
    for cls in (1, 2, 101, 102, 103):
        for k in range(3):
            rel = f"{cls:03d}.Bird_{cls}/Bird_{cls}_{k}.jpg"
            _picture(root / "images" / rel, rng)
            images.append(f"{len(images) + 1} {rel}")
            labels.append(f"{len(labels) + 1} {cls}")
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    return root


@pytest.fixture(scope="module")
def inshop_root(tmp_path_factory):
    """In-Shop format: train items 1, 2; test items 3, 4, 5 with 1 query + 2 gallery images each."""
    root = tmp_path_factory.mktemp("inshop")
    rng = np.random.default_rng(1)
    rows = []
    for item, statuses in [(1, ["train"] * 2), (2, ["train"] * 2)] + [(i, ["query", "gallery", "gallery"])
                                                                     for i in (3, 4, 5)]:
        for k, status in enumerate(statuses):
            rel = f"img/WOMEN/Dresses/id_{item:08d}/{k:02d}_1_front.jpg"
            _picture(root / rel, rng)
            rows.append(f"{rel} id_{item:08d} {status}")
    (root / "list_eval_partition.txt").write_text(
        f"{len(rows)}\nimage_name item_id evaluation_status\n" + "\n".join(rows) + "\n")
    return root


def test_synthetic_table_files_and_values(assets, tmp_path, capsys):
    out_dir = tmp_path / "bench"
    data_root = tmp_path / "synthetic"
    code, out, err = run(capsys, "--checkpoint", assets["ckpt"], f"data.root={data_root}", *SYNTHETIC,
                         "--out", out_dir)
    assert code == 0, err
    assert PUBLISHED_COLUMN in out and "the paper reports no numbers for data.name=synthetic" in out
    assert "leave-one-out on the test split (16 images, 4 classes)" in out and "32 px, no crop" in out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith(("R@", "MAP@R"))}
    assert set(lines) == {"R@1", "R@2", "MAP@R"}  # the checkpoint's eval.recall_k = [1, 2]
    assert all(cells[-1] == "n/a" for cells in lines.values())

    result = json.loads((out_dir / "recall_synthetic.json").read_text())
    assert result["recall_k"] == [1, 2] and result["published"] is None
    assert result["dataset"]["image_size"] == 32 and result["machine"]["cores"] >= 1
    assert {"date", "commit", "versions", "checkpoint_sha256"} <= set(result)
    assert float(lines["R@1"][0]) == pytest.approx(100 * result["metrics"]["recall@1"], abs=0.006)

    # independent reference: plain forward pass, brute-force leave-one-out Recall@1
    model, cfg, _ = load_model(assets["ckpt"])
    cfg = load_config(None, [f"data.root={data_root}", *SYNTHETIC, "data.image_size=32", "data.resize=36"])
    test = build_splits(cfg.data)["test"]
    with torch.no_grad():
        emb = model(torch.stack([test[i][0] for i in range(len(test))])).numpy()
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    recall1 = np.mean(test.labels[sim.argmax(1)] == test.labels)
    assert result["metrics"]["recall@1"] == pytest.approx(recall1, abs=1e-6)

    markdown = (out_dir / "recall_synthetic.md").read_text()
    assert f"| metric | ours (%) | {PUBLISHED_COLUMN} (%) |" in markdown
    assert "cores" in markdown and "commit" in markdown and "retrieval-benchmark --checkpoint" in markdown


def test_cub_published_column_and_crop_notes(assets, cub_root, tmp_path, capsys):
    config = tmp_path / "cub.yaml"
    config.write_text(f"data:\n  name: cub\n  root: {cub_root}\n  image_size: 224\neval:\n  recall_k: [1, 2, 4, 8]\n")
    code, out, err = run(capsys, "--checkpoint", assets["ckpt"], "--config", config, "--out", tmp_path)
    assert code == 0, err
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith(("R@", "MAP@R", "R-p"))}
    assert list(rows) == ["R@1", "R@2", "R@4", "R@8", "MAP@R", "R-precision"]
    assert rows["R@1"][-1] == "79.2" and rows["R@2"][-1] == "n/a" and rows["MAP@R"][-1] == "n/a"
    assert "32 px, no crop" in out  # the checkpoint's size, not the config's 224
    assert "ResNet-50, CGD MG, 1536-d, bounding-box crops" in out and "arXiv:1903.10663" in out
    assert "leave-one-out on the test split (9 images, 3 classes)" in out
    assert "not measured here" in out
    result = json.loads((tmp_path / "recall_cub.json").read_text())
    assert result["published"]["column"] == PUBLISHED_COLUMN
    assert result["published"]["recall_percent"] == {"1": 79.2, "2": None, "4": None, "8": None}
    assert "| R@1 |" in (tmp_path / "recall_cub.md").read_text()

    code, out, _ = run(capsys, "--checkpoint", assets["ckpt"], "--config", config, "data.crop=true",
                       "eval.recall_k=1,10", "--out", tmp_path)
    assert code == 0
    assert "32 px, bounding-box crops" in out
    assert "differs from the standard K list of cub [1, 2, 4, 8]" in out


def test_inshop_query_gallery_protocol(assets, inshop_root, tmp_path, capsys):
    code, out, err = run(capsys, "--checkpoint", assets["ckpt"], "data.name=inshop", f"data.root={inshop_root}",
                         "eval.recall_k=1,10,20,30,40,50", "--out", tmp_path)
    assert code == 0, err
    assert "query/gallery (3 queries against 6 gallery images, 3 items)" in out
    assert next(line for line in out.splitlines() if line.startswith("R@1 ")).split()[-1] == "91.9"
    assert "n/a (no boxes)" in out
    metrics = json.loads((tmp_path / "recall_inshop.json").read_text())["metrics"]
    assert metrics["recall@50"] == 1.0  # K beyond the 6-image gallery: every query finds its item


def test_index_type_column_beside_exact_search(assets, tmp_path, capsys):
    many = ["data.synthetic_classes=4", "data.synthetic_per_class=40", "data.synthetic_size=32",
            f"data.root={tmp_path / 'synthetic'}"]  # 80 test images: enough to train 2 IVF lists
    code, out, err = run(capsys, "--checkpoint", assets["ckpt"], *many, "--index-type", "IVF2,Flat", "--nprobe", "2",
                         "--out", tmp_path)
    assert code == 0, err
    result = json.loads((tmp_path / "recall_synthetic.json").read_text())
    comparison = result["index_comparison"]
    assert comparison["index_setting"] == "IVF2,Flat, nprobe 2" and comparison["queries"] == 80
    # every list visited: the index is exact, so it equals the exact leave-one-out metrics
    assert comparison["index"] == pytest.approx({k: result["metrics"][k] for k in comparison["index"]}, abs=1e-9)
    assert comparison["exact"] == pytest.approx(comparison["index"], abs=1e-9)
    assert comparison["knn_recall"] == {"knn_recall@1": 1.0, "knn_recall@2": 1.0}
    header = next(line for line in out.splitlines() if line.startswith("metric"))
    assert header.split()[:5] == ["metric", "ours", "(%)", "IVF2,Flat,", "nprobe"]
    r1 = next(line for line in out.splitlines() if line.startswith("R@1 ")).split()
    assert r1[1] == r1[2] == f"{100 * result['metrics']['recall@1']:.2f}"
    assert any(line.startswith("kNN-recall@2 ") and line.split()[2] == "100.00" for line in out.splitlines())
    assert "| metric | ours (%) | IVF2,Flat, nprobe 2 (%) |" in (tmp_path / "recall_synthetic.md").read_text()
    code, _, err = run(capsys, "--checkpoint", assets["ckpt"], *many, "--index-type", "IVF64,Flat", "--out", tmp_path)
    assert code == 2 and "--index-type 'IVF64,Flat' needs at least 2,496 gallery vectors" in err
    code, _, err = run(capsys, "--checkpoint", assets["ckpt"], *many, "--index-type", "IVF2,Flat", "--nprobe", "0")
    assert code == 2 and "--nprobe: expected >= 1, got 0" in err


def test_print_config_and_errors(assets, tmp_path, capsys):
    code, out, _ = run(capsys, "--checkpoint", assets["ckpt"], f"data.root={tmp_path}", "--print-config")
    assert code == 0 and "image_size: 32" in out and "backbone: resnet18" in out
    code, _, err = run(capsys, "--checkpoint", tmp_path / "missing.pt")
    assert code == 2 and "checkpoint not found" in err
    code, _, err = run(capsys, "--checkpoint", assets["ckpt"], "data.nope=1")
    assert code == 2 and "unknown key 'data.nope'" in err
    code, _, err = run(capsys, "--checkpoint", assets["ckpt"], "data.name=cub", f"data.root={tmp_path / 'none'}")
    assert code == 2 and "does not exist" in err
    assert not list(tmp_path.glob("recall_*"))


def test_published_numbers_are_the_verified_ones():
    assert {k: p.at(1) for k, p in CGD_PAPER.items()} == {"cub": 79.2, "cars": 94.8, "sop": 84.2, "inshop": 91.9}
    assert published_recall("synthetic") is None
    assert list(CGD_PAPER["sop"].recall) == [1, 10, 100, 1000] and CGD_PAPER["cub"].crop is True
