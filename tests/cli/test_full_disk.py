"""A write that runs out of room (here: a file-size limit, RLIMIT_FSIZE) is one line naming the file; nothing is lost.

The commands run in a subprocess whose files may not grow past a few bytes: with SIGXFSZ ignored
a write past the limit fails with EFBIG, as a full disk fails with ENOSPC.
"""
import hashlib
import os
import resource
import signal
import subprocess
import sys

from retrieval.cli import benchmark, build_index
from retrieval.engine import train
from tests.cli.test_errors import ROOT, _one_error_line
from tests.engine.conftest import data_root, tiny_config  # noqa: F401 - data_root is a fixture

FAST = ["--workers", "0", "--precision", "fp32", "--device", "cpu"]


def _capped(limit):
    def pre():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return pre


def _run_capped(limit, *argv):
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True, timeout=300, env=env,
                          cwd=ROOT, preexec_fn=_capped(limit))


def _md5s(folder):
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_index_append_and_overwrite_on_a_full_disk_keep_the_old_index(assets, tmp_path, capsys):
    index = tmp_path / "idx"
    argv = ["--checkpoint", assets["ckpt"], "--out", index, "--csv", assets["csv"], "-q", *FAST]
    assert build_index.main([str(a) for a in argv]) == 0
    capsys.readouterr()
    before = _md5s(tmp_path)
    for mode in ("--append", "--overwrite"):
        proc = _run_capped(200, "-m", "retrieval.cli.build_index", *argv, mode)
        _one_error_line(proc.stderr, f"{index / 'index.faiss'}: cannot write it", "File too large", "200 bytes")
        assert proc.returncode == 2 and "internal error" not in proc.stderr
        assert _md5s(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_resume_on_a_full_disk_keeps_last_pt(data_root, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(data_root, out, "train.epochs=1", "train.steps_per_epoch=1"))
    kept = {k: v for k, v in _md5s(out).items() if k in ("last.pt", "best.pt", "metrics.csv")}
    proc = _run_capped(1 << 20, os.path.join(ROOT, "train_embed.py"), "--resume", out, "train.epochs=2", "-q")
    assert proc.returncode == 2, proc.stderr
    _one_error_line(proc.stderr, "cannot write it", "File too large")
    assert str(out / "last.pt") in proc.stderr or str(out / ".best.next.pt") in proc.stderr, proc.stderr
    assert {k: v for k, v in _md5s(out).items() if k in kept} == kept
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_benchmark_on_a_full_disk_names_the_report(assets, tmp_path, capsys):
    argv = ["--checkpoint", assets["ckpt"], "data.synthetic_classes=4", "data.synthetic_per_class=4",
            "data.synthetic_size=32", f"data.root={tmp_path / 'synthetic'}", "--out", tmp_path / "out", "-q", *FAST]
    assert benchmark.main([str(a) for a in argv]) == 0  # the data set is generated, the report written
    capsys.readouterr()
    before = _md5s(tmp_path)
    proc = _run_capped(100, "-m", "retrieval.cli.benchmark", *argv)
    _one_error_line(proc.stderr, f"{tmp_path / 'out' / 'recall_synthetic.json'}: cannot write it", "File too large")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert _md5s(tmp_path) == before
