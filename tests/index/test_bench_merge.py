"""benchmarks/bench_merge runs at a tiny size: the merged and the single-process folders hold the same vectors."""
import json

from benchmarks import bench_merge


def test_bench_merge_smoke(tmp_path):
    res = bench_merge.main(["--n", "3000", "--dim", "8", "--shards", "3", "--factory", "IVF8,Flat", "--train-size",
                            "1000", "--clusters", "20", "--queries", "50", "--nprobe", "8", "--in-process", "--work-root", str(tmp_path),
                            "--out", str(tmp_path / "out")])
    saved = json.loads((tmp_path / "out" / "merge.json").read_text())
    assert saved["n"] == 3000 and saved["shards"] == 3 and {"build", "merge", "single"} <= saved.keys()
    assert res["merge"]["count"] == res["single"]["count"] == 3000
    assert res["merge"]["ivfdata_bytes"] == 3000 * (8 * 4 + 8)  # codes + ids of every vector, on disk
    assert {"seconds", "peak_rss_mb", "extra_rss_mb", "extra_anon_mb", "extra_file_mb"} <= res["merge"].keys()
    assert res["merge"]["seconds"] > 0 and res["single"]["seconds"] > 0
    assert res["exact"]["queries"] == 50 and res["exact"]["knn_recall@10"] == 1.0  # nprobe 8 of 8 lists: exact
    assert (tmp_path / "out" / "merge.md").read_text().startswith("Merging 3 shards of a 3,000 × 8 gallery")
    assert "kNN-recall@10 of the index 1.0" in (tmp_path / "out" / "merge.md").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the work folder is removed
