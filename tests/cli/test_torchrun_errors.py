"""A bad flag under torchrun: rank 0 prints the one error line, the others stay quiet, torchrun's summary names it."""
import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import make_checkpoint, make_gallery

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchrun_errors")
    return {"root": root, "gallery": make_gallery(root / "gallery", classes=2, per_class=3, size=32),
            "ckpt": make_checkpoint(root / "a.pt")}


def _torchrun(small, out, *flags):
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "-m", "retrieval.cli.build_index", "--checkpoint", str(small["ckpt"]), "--out", str(out), "--images",
           str(small["gallery"]), "--folder-labels", "--workers", "0", "--device", "cpu", *flags]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)


@pytest.mark.parametrize("flags, setup, words", [
    (["--index-type", "Flat"], None, ["--index-type 'Flat'", "need an IVF index"]),
    (["--index-type", "IVF2,Flat", "--train-size", "0"], None, ["--train-size: expected >= 1, got 0"]),
    (["--index-type", "IVF2,Flat"], "existing", ["already exists; pass --overwrite", "cannot --append"]),
    (["--index-type", "IVF2,Flat"], "truncated", ["not a readable checkpoint"]),
], ids=["flat", "train-size-0", "existing-out", "truncated-checkpoint"])
def test_a_bad_flag_under_torchrun_is_one_line_from_rank_0(small, tmp_path, flags, setup, words):
    out = tmp_path / "idx"
    if setup == "existing":
        out.mkdir()
        (out / "mine.txt").write_text("mine")
    if setup == "truncated":
        half = tmp_path / "half.pt"
        half.write_bytes(small["ckpt"].read_bytes()[:50_000])
        small = {**small, "ckpt": half}
    proc = _torchrun(small, out, *flags)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr  # rank 0 alone, on a line of its own
    assert all(w in errors[0] for w in words), errors
    assert proc.stderr.count("error: ") == 1  # nothing run together with another line
    summary = proc.stderr.split("Root Cause (first observed failure):")[1]
    assert "exitcode  : 2" in summary and words[0] in summary  # the summary names the real error (record)
    assert "File \"" + os.path.join(ROOT, "retrieval") not in proc.stderr  # no rank printed a traceback
    assert (sorted(p.name for p in out.iterdir()) == ["mine.txt"]) if setup == "existing" else not out.exists()
