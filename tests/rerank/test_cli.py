"""retrieval-benchmark --rerank and query.py --rerank on the tiny fixtures: both columns, bad specs."""
import json

import pytest

from retrieval.cli import benchmark, build_index, query

SYNTHETIC = ["data.synthetic_classes=8", "data.synthetic_per_class=4", "data.synthetic_size=32"]
FAST = ["--workers", "0", "--precision", "fp32", "-q"]


def bench(capsys, *argv):
    code = benchmark.main([str(a) for a in argv] + FAST)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("spec", ["kreciprocal:k1=4,k2=2,lambda=0.3", "dba_aqe:n=1,dba_n=1"])
def test_benchmark_prints_plain_and_reranked(assets, tmp_path, capsys, spec):
    code, out, err = bench(capsys, "--checkpoint", assets["ckpt"], f"data.root={tmp_path / 'syn'}", *SYNTHETIC,
                           "--rerank", spec, "--out", tmp_path)
    assert code == 0, err
    name = spec.split(":")[0]
    header = next(line for line in out.splitlines() if line.startswith("metric"))
    assert "ours (%)" in header and f"re-ranked {name}:" in header
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith(("R@", "MAP@R", "ms"))}
    assert set(rows) == {"R@1", "R@2", "MAP@R", "ms"} and all(len(cells) >= 3 for cells in rows.values())
    result = json.loads((tmp_path / "recall_synthetic.json").read_text())
    rerank = result["rerank_comparison"]
    assert rerank["rerank"].startswith(name) and rerank["queries"] == 16
    # the plain list of the comparison is the exact protocol of the "ours" column
    assert rerank["plain"]["recall@1"] == pytest.approx(result["metrics"]["recall@1"])
    assert float(rows["R@1"][1]) == pytest.approx(100 * rerank["reranked"]["recall@1"], abs=0.006)
    assert f"re-ranked {name}" in (tmp_path / "recall_synthetic.md").read_text()


def test_benchmark_takes_the_config_section(assets, tmp_path, capsys):
    code, out, err = bench(capsys, "--checkpoint", assets["ckpt"], f"data.root={tmp_path / 'syn'}", *SYNTHETIC,
                           "rerank.name=aqe", "rerank.args={n: 1}", "--out", tmp_path)
    assert code == 0, err
    assert "re-ranked aqe:n=1,alpha=3 (%)" in out


def test_benchmark_rejects_bad_spec_and_index_type(assets, tmp_path, capsys):
    code, _, err = bench(capsys, "--checkpoint", assets["ckpt"], "--rerank", "aqe:n=0")
    assert code == 2 and "--rerank aqe: n must be > 0, got 0" in err
    code, _, err = bench(capsys, "--checkpoint", assets["ckpt"], f"data.root={tmp_path}", *SYNTHETIC,
                         "--rerank", "aqe", "--index-type", "IVF2,Flat")
    assert code == 2 and "give one" in err


@pytest.fixture(scope="module")
def index_dir(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("rerank") / "idx"
    assert build_index.main(["--checkpoint", str(assets["ckpt"]), "--out", str(out), "--csv", str(assets["csv"]),
                             "-q", "--workers", "0", "--precision", "fp32"]) == 0
    return out


def ask(capsys, assets, index, *argv):
    code = query.main(["--checkpoint", str(assets["ckpt"]), "--index", str(index), *map(str, argv), *FAST])
    out, err = capsys.readouterr()
    return code, out, err


def test_query_eval_prints_both_columns(assets, index_dir, capsys):
    code, out, err = ask(capsys, assets, index_dir, "--eval", "--csv", assets["csv"], "--rerank", "aqe:n=1")
    assert code == 0, err
    assert "plain" in out and "re-ranked aqe:n=1,alpha=3" in out and "ms / query" in out
    line = next(line for line in out.splitlines() if line.strip().startswith("recall@1"))
    assert len(line.split()) == 3
    code, out, _ = ask(capsys, assets, index_dir, "--eval", "--csv", assets["csv"], "--rerank", "dba",
                       "--format", "json")
    result = json.loads(out)
    assert set(result["rerank"]) >= {"plain", "reranked", "ms_per_query"} and "recall@1" in result


def test_query_lists_reranked_results(assets, index_dir, capsys):
    code, out, err = ask(capsys, assets, index_dir, "-k", "3", "--format", "json", "--rerank",
                         "kreciprocal:k1=4,k2=2", assets["paths"][0])
    assert code == 0, err
    results = json.loads(out)[0]["results"]
    assert len(results) == 3 and results[0]["gallery_path"] == str(assets["paths"][0])
    code, _, err = ask(capsys, assets, index_dir, "--rerank", "kreciprocal:k2=30", assets["paths"][0])
    assert code == 2 and "k2 must be <= k1=20, got 30" in err
