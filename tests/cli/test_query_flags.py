"""query / retrieval-benchmark: odd flag values, flags that do not apply, --eval after removals (#25, #26)."""
import json
import shutil

import pytest

from retrieval.cli import benchmark, build_index, query
from retrieval.index import remove_entries
from tests.cli.test_errors import _one_error_line

FAST = ["--workers", "0", "--precision", "fp32", "--batch-size", "16"]


def _build(assets, out, *extra, csv=None, capsys=None):
    code = build_index.main(["--checkpoint", str(assets["ckpt"]), "--out", str(out), "--csv", str(csv or assets["csv"]),
                             "-q", *FAST, *extra])
    assert code == 0
    if capsys is not None:
        capsys.readouterr()  # build_index's summary line
    return out


@pytest.fixture(scope="module")
def flat(assets, tmp_path_factory):
    return _build(assets, tmp_path_factory.mktemp("flags") / "flat")


@pytest.fixture(scope="module")
def hnsw(assets, tmp_path_factory):
    return _build(assets, tmp_path_factory.mktemp("flags") / "hnsw", "--index-type", "HNSW8")


def _query(capsys, assets, index, *argv):
    code = query.main(["--checkpoint", str(assets["ckpt"]), "--index", str(index), *[str(a) for a in argv], *FAST])
    return (code, *capsys.readouterr())


@pytest.mark.parametrize("flags, words", [
    (["--nprobe", "0"], ["--nprobe", ">= 1", "got 0"]),
    (["--nprobe", "-2"], ["--nprobe", ">= 1", "got -2"]),
    (["--ef-search", "0"], ["--ef-search", ">= 1"]),
    (["--ef-search", "-3"], ["--ef-search", ">= 1"]),
    (["--eval", "--recall-k", "0,1"], ["--recall-k 0,1", "K values >= 1"]),
    (["--eval", "--recall-k", "1,x"], ["--recall-k 1,x", "K values >= 1"]),
    (["--recall-k", "1"], ["--recall-k only applies with --eval"]),
], ids=["nprobe0", "nprobe-2", "ef0", "ef-3", "recall0", "recallx", "recall-no-eval"])
def test_odd_search_values_are_refused_naming_the_flag(assets, hnsw, capsys, flags, words):
    before = {p.name: p.read_bytes() for p in hnsw.iterdir()}
    code, out, err = _query(capsys, assets, hnsw, "--images", assets["gallery"], "--folder-labels", "-k", "3", *flags)
    _one_error_line(err, *words)
    assert code == 2 and out == "" and {p.name: p.read_bytes() for p in hnsw.iterdir()} == before


def test_a_flag_the_index_type_ignores_is_noted_and_ef_search_gives_k_hits(assets, flat, hnsw, capsys):
    code, out, err = _query(capsys, assets, flat, assets["paths"][0], "-k", "3", "--nprobe", "4", "--ef-search", "8",
                            "--format", "json")
    assert code == 0, err
    assert "note: --nprobe only applies to IVF indexes" in err and "'Flat' index, so it is ignored" in err
    assert "note: --ef-search only applies to HNSW indexes" in err
    code, out, err = _query(capsys, assets, hnsw, assets["paths"][0], "-k", "3", "--ef-search", "1", "--format", "json")
    assert code == 0 and "note:" not in err, err
    assert len(json.loads(out)[0]["results"]) == 3  # FAISS searches max(efSearch, k) candidates


def test_eval_on_a_gallery_without_labels_is_refused(assets, tmp_path, capsys):
    unlabelled = tmp_path / "nolabels.csv"
    unlabelled.write_text("path\n" + "".join(f"{p}\n" for p in assets["paths"]))
    index = _build(assets, tmp_path / "idx", csv=unlabelled, capsys=capsys)
    code, out, err = _query(capsys, assets, index, "--eval", "--images", assets["gallery"], "--folder-labels")
    _one_error_line(err, "--eval needs labels on the gallery", "'label' column", str(index / "metadata.csv"))
    assert code == 2 and "nan" not in out.lower()


def test_eval_after_removals_equals_a_fresh_index_of_the_live_entries(assets, tmp_path, capsys):
    gone = [1, 4]  # one image each of class0 and class1: their classes shrink, R of MAP@R with them
    index = _build(assets, tmp_path / "removed", capsys=capsys)
    remove_entries(index, gone)
    rows = assets["csv"].read_text().splitlines()
    live = tmp_path / "live.csv"
    live.write_text("\n".join([rows[0]] + [r for i, r in enumerate(rows[1:]) if i not in gone]) + "\n")
    shutil.copytree(assets["gallery"], tmp_path / "gallery")  # live.csv's paths are relative to it
    fresh = _build(assets, tmp_path / "fresh", csv=live, capsys=capsys)
    argv = ["--eval", "--format", "json", "--recall-k", "1,2", "--images", assets["gallery"], "--folder-labels"]
    code, out_removed, err = _query(capsys, assets, index, *argv)
    assert code == 0, err
    code, out_fresh, err = _query(capsys, assets, fresh, *argv)
    assert code == 0, err
    got, expected = json.loads(out_removed), json.loads(out_fresh)
    assert got["gallery"] == expected["gallery"] == 7
    assert {k: got[k] for k in ("map@r", "r_precision", "recall@1", "recall@2")} == pytest.approx(
        {k: expected[k] for k in ("map@r", "r_precision", "recall@1", "recall@2")}, abs=1e-9)


def test_an_index_with_every_entry_removed_says_so(assets, tmp_path, capsys):
    index = _build(assets, tmp_path / "idx", capsys=capsys)
    remove_entries(index, list(range(9)))
    code, out, err = _query(capsys, assets, index, assets["paths"][0])
    _one_error_line(err, str(index), "the index has no live entries")
    assert code == 2 and "Empty DataFrame" not in out + err


SYNTHETIC = ["data.synthetic_classes=4", "data.synthetic_per_class=4", "data.synthetic_size=32"]


def _benchmark(capsys, *argv):
    code = benchmark.main([str(a) for a in argv] + ["--workers", "0", "--precision", "fp32", "-q"])
    return (code, *capsys.readouterr())


def test_benchmark_nprobe_without_an_index_type_and_out_that_is_a_file(assets, tmp_path, capsys):
    data = [*SYNTHETIC, f"data.root={tmp_path / 'synthetic'}"]
    code, _, err = _benchmark(capsys, "--checkpoint", assets["ckpt"], *data, "--nprobe", "4", "--out", tmp_path / "o")
    _one_error_line(err, "--nprobe only applies with an IVF --index-type")
    assert code == 2 and not (tmp_path / "o").exists()
    (tmp_path / "file").write_text("mine")
    code, _, err = _benchmark(capsys, "--checkpoint", assets["ckpt"], *data, "--out", tmp_path / "file")
    _one_error_line(err, f"--out {tmp_path / 'file'}", "is a file", "expected a folder")
    assert code == 2 and (tmp_path / "file").read_text() == "mine"
    code, _, err = _benchmark(capsys, "--checkpoint", assets["ckpt"], *data, "--index-type", "HNSW8", "--nprobe", "4",
                              "--out", tmp_path / "o")
    assert code == 0, err
    assert "note: --nprobe only applies to IVF indexes; 'HNSW8' ignores it" in err
