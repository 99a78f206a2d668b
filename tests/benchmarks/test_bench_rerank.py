"""benchmarks/bench_rerank.py at a tiny size: parameters chosen on val, the test table, the memory mode."""
import json

from benchmarks import bench_rerank


def test_honest_parameters_on_generated_data(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_rerank, "GRIDS", {"aqe": {"n": [1, 3], "alpha": [3.0]}, "dba": {"n": [1, 2], "alpha": [3.0]},
                                                "kreciprocal": {"k1": [6], "k2": [2, 8], "lambda": [0.3]}})
    assert bench_rerank.main(["--synthetic", "--val-n", "120", "--test-n", "160", "--per-class", "20", "--dim", "16",
                              "--candidates", "30", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "rerank.json").read_text())
    assert [r["method"] for r in result["rows"]] == bench_rerank.METHODS
    assert len(result["tried"]["kreciprocal"]) == 1  # k2 > k1 is skipped
    assert result["chosen"]["dba_aqe"].endswith(result["chosen"]["dba"].replace("dba:n=", "dba_n=")
                                                .replace("alpha=", "dba_alpha="))
    row = result["rows"][0]
    assert {"recall@1", "recall@8", "map@r", "r_precision", "ms_per_query", "spec"} <= row.keys()
    assert "| kreciprocal | `kreciprocal:k1=6" in (tmp_path / "rerank.md").read_text()


def test_memory_mode(tmp_path):
    assert bench_rerank.main(["--synthetic-memory", "--n", "400", "--dim", "16", "--k", "10", "--methods",
                              "kreciprocal", "--candidates", "20", "--out", str(tmp_path)]) == 0
    row = json.loads((tmp_path / "rerank_memory.json").read_text())["rows"][0]
    assert row["method"] == "kreciprocal" and row["seconds"] > 0 and "peak_extra_mb" in row
