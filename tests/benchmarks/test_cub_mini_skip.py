"""The CUB_mini ablation skips cleanly (exit 0, a message, nothing written) when the photos are absent."""
from benchmarks import bench_cub_mini


def test_skips_without_data(tmp_path, capsys):
    out = tmp_path / "out"
    code = bench_cub_mini.main(["--root", str(tmp_path / "no_cub"), "--out", str(out)])
    assert code in (0, None)
    assert "skipped" in capsys.readouterr().out
    assert not out.exists()
