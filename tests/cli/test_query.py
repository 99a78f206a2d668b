"""query command: round trip on a tiny gallery, output formats, grid, --eval, and each bad input."""
import io
import json
import os
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from retrieval.cli import build_index, query
from retrieval.metrics import retrieval_metrics

FAST = ["--workers", "0", "--precision", "fp32", "--batch-size", "16"]  # bf16 is covered by tests/test_embed.py


@pytest.fixture(scope="module")
def index_dir(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("query") / "idx"
    code = build_index.main(["--checkpoint", str(assets["ckpt"]), "--out", str(out), "--csv", str(assets["csv"]),
                             "--save-embeddings", "-q", *FAST])
    assert code == 0
    return out


def run(capsys, assets, index, *argv, ckpt="ckpt"):
    code = query.main(["--checkpoint", str(assets[ckpt]), "--index", str(index), *[str(a) for a in argv], *FAST])
    out, err = capsys.readouterr()
    return code, out, err


def test_each_gallery_image_finds_itself_first(assets, index_dir, capsys):
    code, out, err = run(capsys, assets, index_dir, "-k", "3", "--format", "csv", *assets["paths"])
    assert code == 0, err
    table = pd.read_csv(io.StringIO(out), keep_default_na=False)
    assert list(table.columns) == ["query", "query_label", "rank", "score", "gallery_id", "gallery_path",
                                   "gallery_label"]
    assert len(table) == 27
    top = table[table["rank"] == 1]
    assert (top["gallery_path"] == top["query"]).all()
    assert np.allclose(top["score"], 1, atol=1e-4)
    assert (top["gallery_label"] == [p.parent.name for p in assets["paths"]]).all()


def test_table_and_json_formats(assets, index_dir, capsys):
    code, out, _ = run(capsys, assets, index_dir, "-k", "2", assets["paths"][4])
    assert code == 0
    assert out.startswith(f"query {assets['paths'][4]}") and "rank" in out and "class1" in out
    code, out, _ = run(capsys, assets, index_dir, "-k", "2", "--format", "json", assets["paths"][4])
    result = json.loads(out)
    assert result[0]["query"] == str(assets["paths"][4])
    assert [r["rank"] for r in result[0]["results"]] == [1, 2]
    assert result[0]["results"][0]["gallery_path"] == str(assets["paths"][4])


def test_k_larger_than_gallery_is_clamped(assets, index_dir, capsys):
    code, out, err = run(capsys, assets, index_dir, "-k", "50", "--format", "csv", assets["paths"][0])
    assert code == 0 and "clamped to 9" in err
    assert len(pd.read_csv(io.StringIO(out))) == 9


def test_grid_picture_has_green_and_red_borders(assets, index_dir, tmp_path, capsys):
    queries = tmp_path / "q.csv"
    queries.write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in assets["paths"][:2]))
    grid = tmp_path / "grid.png"
    code, _, err = run(capsys, assets, index_dir, "-k", "9", "--csv", queries, "--grid", grid)
    assert code == 0, err
    image = np.asarray(Image.open(grid).convert("RGB"))
    # the layout (viz/grid.py): 2 rows (queries) × 10 columns (query + 9 results) of 112-px thumbnails with a
    # 4-px border, a 30-px caption and 6-px gaps, plus the gap after the query column and the margins
    cell_w, cell_h = 112 + 2 * 4 + 6, 112 + 2 * 4 + 30 + 6
    assert image.shape == (6 + 2 * cell_h, 6 + 10 * cell_w + 6, 3) == (318, 1272, 3)
    colours = {tuple(c) for c in image.reshape(-1, 3)}
    assert (44, 160, 44) in colours and (214, 39, 40) in colours and (31, 119, 180) in colours
    # first result of the first row is the query itself: green border at its top-left corner
    from retrieval.viz.grid import BORDER, GAP

    x = GAP + (112 + 2 * BORDER + GAP) + GAP
    assert tuple(image[GAP + 1, x + 1]) == (44, 160, 44)


def test_eval_matches_the_metrics_of_the_embeddings(assets, index_dir, tmp_path, capsys):
    code, out, err = run(capsys, assets, index_dir, "--eval", "--format", "json", "--recall-k", "1,2,4",
                         "--images", assets["gallery"], "--folder-labels")
    assert code == 0, err
    got = json.loads(out)
    assert got.pop("queries") == 9 and got.pop("gallery") == 9 and got.pop("index") == "Flat"
    gallery = np.load(index_dir / "embeddings.npy")
    labels = np.repeat(np.arange(3), 3)
    # queries = the gallery images themselves under the query/gallery protocol: each finds itself
    expected = retrieval_metrics(gallery, labels, gallery, labels, ks=(1, 2, 4))
    assert got == pytest.approx(expected, abs=1e-6)
    assert got["recall@1"] == 1.0
    code, out, _ = run(capsys, assets, index_dir, "--eval", "--images", assets["gallery"], "--folder-labels")
    assert "recall@1" in out and "9 queries against 9 gallery images" in out


def test_eval_on_an_approximate_index_scores_exact_search_beside_it(assets, index_dir, tmp_path, capsys):
    from retrieval.approximation import sample_rows
    from retrieval.data import table_from_folder
    from retrieval.metrics import metrics_from_neighbours

    approx = tmp_path / "hnsw"  # HNSW needs no training, so 9 images make an approximate index
    for out, extra in ((approx, ["--save-embeddings"]), (tmp_path / "bare", [])):
        assert build_index.main(["--checkpoint", str(assets["ckpt"]), "--out", str(out), "--csv", str(assets["csv"]),
                                 "--index-type", "HNSW4", "-q", *extra, *FAST]) == 0
    capsys.readouterr()
    queries = ["--images", assets["gallery"], "--folder-labels"]
    code, out, err = run(capsys, assets, approx, "--eval", "--format", "json", "--recall-k", "1,4",
                         "--exact-sample", "5", *queries)
    assert code == 0, err
    got = json.loads(out)
    assert got["index"] == "HNSW4"
    comparison = got["exact_comparison"]
    assert comparison["sample"] == 5 and set(comparison["ms_per_query"]) == {"index", "exact"}
    # the exact side is brute force over embeddings.npy for the sampled queries (query order = sorted paths)
    gallery, meta = np.load(approx / "embeddings.npy"), pd.read_csv(approx / "metadata.csv")
    labels = meta["label"].astype(str)
    codes = labels.map({name: i for i, name in enumerate(sorted(set(labels)))}).to_numpy()
    row_of = {os.path.realpath(p): i for i, p in enumerate(meta["path"])}
    query_rows = [row_of[os.path.realpath(p)] for p in table_from_folder(assets["gallery"], folder_labels=True)["path"]]
    rows = np.array(query_rows)[sample_rows(9, 5)]  # the queries are the gallery images, in another order
    neighbours = np.argsort(-(gallery[rows] @ gallery.T), axis=1, kind="stable")[:, :4]
    assert comparison["exact"] == pytest.approx(metrics_from_neighbours(neighbours, codes[rows], codes, ks=[1, 4]))
    assert comparison["index"] == pytest.approx(comparison["exact"])  # 9 vectors: the graph reaches them all
    assert comparison["knn_recall"] == {"knn_recall@1": 1.0, "knn_recall@4": 1.0}
    code, out, err = run(capsys, assets, approx, "--eval", *queries)
    assert code == 0 and "the index against exact search (embeddings.npy) on 9 of the queries" in out
    assert "knn_recall@2" in out and "ms / query" in out  # K: the checkpoint's eval.recall_k [1, 2]
    code, out, err = run(capsys, assets, tmp_path / "bare", "--eval", *queries)
    assert code == 0 and "recall@1" in out and "exact search" not in out
    assert "approximate HNSW4 index without embeddings.npy, so it is not compared with exact search" in err
    code, out, _ = run(capsys, assets, index_dir, "--eval", "--format", "csv", *queries)  # Flat: exact already
    assert code == 0 and "knn_recall" not in out and "sample_" not in out
    code, _, err = run(capsys, assets, approx, "--exact-sample", "5", *queries)
    assert code == 2 and "--exact-sample only applies with --eval" in err
    code, _, err = run(capsys, assets, approx, "--eval", "--exact-sample", "-1", *queries)
    assert code == 2 and "--exact-sample: expected >= 0, got -1" in err


@pytest.fixture()
def broken_index(index_dir, tmp_path):
    def make(how):
        folder = tmp_path / "broken"
        shutil.copytree(index_dir, folder)
        if how == "missing index":
            (folder / "index.faiss").unlink()
        elif how == "truncated index":
            data = (folder / "index.faiss").read_bytes()
            (folder / "index.faiss").write_bytes(data[:-10])
        elif how == "metadata rows":
            lines = (folder / "metadata.csv").read_text().splitlines(keepends=True)
            (folder / "metadata.csv").write_text("".join(lines[:-2]))
        return folder
    return make


@pytest.mark.parametrize("how, message", [
    ("missing index", "index.faiss: missing"),
    ("truncated index", "index.faiss: .* bytes but the manifest records"),
    ("metadata rows", "metadata.csv: 7 rows but index.faiss holds 9"),
])
def test_broken_index_folder(assets, broken_index, tmp_path, capsys, how, message):
    grid = tmp_path / "g.png"
    code, _, err = run(capsys, assets, broken_index(how), "--grid", grid, assets["paths"][0])
    assert code == 2
    assert re.search(message, err), err
    assert not grid.exists()


@pytest.mark.parametrize("ckpt, message", [
    ("other", "built with checkpoint sha256"),
    ("narrow", "dimension 16 but the model embeds to 8"),
])
def test_index_of_another_model_is_refused(assets, index_dir, tmp_path, capsys, ckpt, message):
    grid = tmp_path / "g.png"
    code, _, err = run(capsys, assets, index_dir, "--grid", grid, assets["paths"][0], ckpt=ckpt)
    assert code == 2 and message in err and "manifest.json" in err
    assert not grid.exists()


def test_bad_queries(assets, index_dir, tmp_path, capsys):
    grid = tmp_path / "g.png"
    code, _, err = run(capsys, assets, index_dir, "--grid", grid, tmp_path / "ghost.jpg")
    assert code == 2 and "ghost.jpg" in err and "not found" in err
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    code, _, err = run(capsys, assets, index_dir, "--grid", grid, bad)
    assert code == 2 and str(bad) in err and "unreadable query image" in err
    code, _, err = run(capsys, assets, index_dir, "--eval", assets["paths"][0])
    assert code == 2 and "--eval needs a label for every query" in err
    code, _, err = run(capsys, assets, index_dir, "--grid", tmp_path / "g.xyz", assets["paths"][0])
    assert code == 2 and "unknown image extension" in err
    code, _, err = run(capsys, assets, index_dir)
    assert code == 2 and "give the queries one way" in err
    code, _, err = run(capsys, assets, tmp_path / "no_index", assets["paths"][0])
    assert code == 2 and "index folder not found" in err
    assert not grid.exists()


def test_grid_survives_a_gallery_image_that_moved(assets, tmp_path, caplog):
    from retrieval.viz import Hit, save_retrieval_grid

    out = save_retrieval_grid(tmp_path / "g.jpg", [str(assets["paths"][0])],
                              [[Hit(str(tmp_path / "gone.png"), 0.5, "class0")]], ["class0"], thumb=48)
    assert Image.open(out).size == (6 + 2 * (48 + 8 + 6) + 6, 6 + 48 + 8 + 30 + 6)
    assert "gone.png" in caplog.text
