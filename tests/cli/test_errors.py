"""Every bad input is one `error:` line naming the key, flag or path, exit 2, no traceback, nothing written."""
import errno
import os

import pytest

from retrieval.cli import build_index, query, train

TRAIN = ["--config", "{root}/configs/demo.yaml", "train.out_dir={tmp}/run", "data.root={tmp}/data"]
BAD_OVERRIDES = [
    ("optim.lr=nan", "optim.lr"), ("optim.lr=inf", "optim.lr"), ("train.seed=-1", "train.seed"),
    ("optim.warmup_epochs=-1", "optim.warmup_epochs"), ("loss.args.margin=-1", "loss.args.margin"),
    ("loss.margin=-1", "loss.args.margin"), ("train.eval_every=-1", "train.eval_every"),
    ("train.steps_per_epoch=-5", "train.steps_per_epoch"), ("data.root=", "data.root"),
    ("train.device=foo", "train.device"), ("data.synthetic_classes=1", "data.synthetic_classes"),
    ("data.val_classes=-2", "data.val_classes"), ("loss.args.alpha=3", "loss.args.alpha"),
    ("loss.miner_args.margin=x", "loss.miner_args.margin"), ("model.embedding_bn=sometimes", "model.embedding_bn"),
]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _one_error_line(err: str, *words: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len([line for line in lines if line.startswith("error: ")]) == 1, err
    error = next(line for line in lines if line.startswith("error: "))
    for word in words:
        assert word in error, (word, error)


def _train_argv(tmp_path, *extra):
    return [a.format(root=ROOT, tmp=tmp_path) for a in TRAIN] + list(extra) + ["-q"]


@pytest.mark.parametrize("override, key", BAD_OVERRIDES, ids=[o for o, _ in BAD_OVERRIDES])
def test_bad_override_is_refused_before_any_work(tmp_path, capsys, override, key):
    code = train.main(_train_argv(tmp_path, override))
    _one_error_line(capsys.readouterr().err, key)
    assert code == 2 and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text, words", [
    ("", ["empty"]), (b"\xff\xfe\x00m\x00o\x00d", ["not a UTF-8 text file"]), ("- a\n- b\n", ["mapping of sections"]),
], ids=["empty", "utf16", "list"])
def test_bad_config_file_is_refused(tmp_path, capsys, text, words):
    path = tmp_path / "c.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    code = train.main(["--config", str(path), f"train.out_dir={tmp_path}/run", "-q"])
    _one_error_line(capsys.readouterr().err, str(path), *words)
    assert code == 2 and not (tmp_path / "run").exists()


def test_out_dir_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "run").write_text("mine")
    code = train.main(_train_argv(tmp_path, "data.synthetic_classes=8", "data.synthetic_per_class=4",
                                  "data.batch_size=8", "train.epochs=1", "train.steps_per_epoch=1"))
    _one_error_line(capsys.readouterr().err, "train.out_dir", "is a file")
    assert code == 2 and (tmp_path / "run").read_text() == "mine"


FAST = ["--workers", "0", "--precision", "fp32"]


@pytest.mark.parametrize("flags, words", [
    (["--device", "cuda"], ["--device=cuda", "CUDA is not available"]),
    (["--device", "cuda:1"], ["--device=cuda:1"]),
    (["--device", "mps"], ["--device=mps", "not supported"]),
    (["--device", "foo"], ["--device=foo", "not a device"]),
    (["--batch-size", "0"], ["--batch-size", ">= 1"]),
    (["--workers", "-1"], ["--workers", ">= 0"]),
], ids=["cuda", "cuda1", "mps", "foo", "batch0", "workers"])
def test_bad_embedding_flags_of_build_index_and_query(assets, tmp_path, capsys, flags, words):
    argv = FAST + flags  # the later flag wins in argparse
    code = build_index.main(["--checkpoint", str(assets["ckpt"]), "--out", str(tmp_path / "idx"),
                             "--csv", str(assets["csv"]), "-q", *argv])
    _one_error_line(capsys.readouterr().err, *words)
    assert code == 2 and not (tmp_path / "idx").exists()
    index = tmp_path / "built"
    assert build_index.main(["--checkpoint", str(assets["ckpt"]), "--out", str(index), "--csv", str(assets["csv"]),
                             "-q", *FAST]) == 0
    capsys.readouterr()
    code = query.main(["--checkpoint", str(assets["ckpt"]), "--index", str(index), str(assets["paths"][0]), "-q",
                       *argv])
    _one_error_line(capsys.readouterr().err, *words)
    assert code == 2 and "train.device" not in capsys.readouterr().err


def test_fp16_on_a_cpu_names_the_flag(assets, tmp_path, capsys):
    code = build_index.main(["--checkpoint", str(assets["ckpt"]), "--out", str(tmp_path / "idx"), "--csv",
                             str(assets["csv"]), "--device", "cpu", "--precision", "fp16", "--workers", "0", "-q"])
    _one_error_line(capsys.readouterr().err, "--precision=fp16", "CUDA")
    assert code == 2 and not (tmp_path / "idx").exists()


@pytest.mark.parametrize("errno_, words", [(errno.ENOSPC, ["No space left", "free some space"]),
                                           (errno.EROFS, ["Read-only file system"])], ids=["full", "read-only"])
def test_full_or_read_only_disk_is_one_line_and_keeps_the_old_index(assets, tmp_path, capsys, monkeypatch,
                                                                     errno_, words):
    index = tmp_path / "idx"
    assert build_index.main(["--checkpoint", str(assets["ckpt"]), "--out", str(index), "--csv", str(assets["csv"]),
                             "-q", *FAST]) == 0
    before = {p.name: p.read_bytes() for p in index.iterdir()}
    real = os.replace

    def failing(src, dst):
        if str(dst) == str(index) and str(src).endswith(".tmp"):  # moving the new folder into place
            raise OSError(errno_, os.strerror(errno_), str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    code = build_index.main(["--checkpoint", str(assets["ckpt"]), "--out", str(index), "--csv", str(assets["csv"]),
                             "--overwrite", "-q", *FAST])
    monkeypatch.undo()
    _one_error_line(capsys.readouterr().err, str(index), *words)
    assert code == 2 and {p.name: p.read_bytes() for p in index.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_verbose_shows_the_traceback_the_error_line_hides(tmp_path, capsys):
    assert train.main(_train_argv(tmp_path, "optim.lr=nan")) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert train.main([a.replace("-q", "-v") for a in _train_argv(tmp_path, "optim.lr=nan")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "error: " in err and "optim.lr" in err


def test_an_internal_error_is_one_line_and_exit_1_unless_verbose(tmp_path, capsys, monkeypatch):
    import retrieval.engine

    def broken(*args, **kwargs):
        raise KeyError("surprise")

    monkeypatch.setattr(retrieval.engine, "train", broken)
    code = train.main(_train_argv(tmp_path))
    err = capsys.readouterr().err
    assert code == 1 and "internal error (KeyError" in err and "-v" in err and "Traceback" not in err
    with pytest.raises(KeyError):
        train.main([a.replace("-q", "-v") for a in _train_argv(tmp_path)])
