"""Run folders never lose data: each epoch commits whole, --overwrite replaces only runs, --resume repairs or refuses."""

import pandas as pd
import pytest
import torch

from retrieval import evaluate
from retrieval.checkpoint import read_checkpoint
from retrieval.cli import train as train_cli
from retrieval.engine import run_dir as run_dir_module
from retrieval.engine import train, trainer
from retrieval.errors import TrainingError
from retrieval.optim import lr_factor

from .conftest import tiny_config

RUN = ("train.epochs=2", "train.steps_per_epoch=2", "data.val_classes=2")


def _validation(monkeypatch, values):
    """Make validation Recall@1 follow ``values`` epoch by epoch (the test metrics stay real)."""
    real = evaluate.evaluate_splits
    calls = iter(values)

    def fake(embedder, splits, cfg, progress=True):
        return {**real(embedder, splits, cfg, progress), "val_recall@1": next(calls)}

    monkeypatch.setattr(evaluate, "evaluate_splits", fake)


@pytest.fixture
def rising_validation(monkeypatch):
    """Validation Recall@1 that improves every epoch, so every epoch commits a new best.pt."""
    _validation(monkeypatch, [i / 10 for i in range(1, 100)])


def _state(folder):
    last = read_checkpoint(folder / "last.pt")
    return last, read_checkpoint(folder / "best.pt")["epoch"], list(pd.read_csv(folder / "metrics.csv")["epoch"])


@pytest.fixture
def straight(data_root, tmp_path, rising_validation):
    train(tiny_config(data_root, tmp_path / "straight", *RUN))
    return _state(tmp_path / "straight")


class Killed(BaseException):
    """Stands for kill -9: nothing after it runs (BaseException, so no handler catches it)."""


WRITES = ["best candidate", "metrics row", "last.pt", "best rename"]


@pytest.mark.parametrize("kill_at", WRITES)
def test_a_kill_at_each_write_of_an_epoch_resumes_to_the_uninterrupted_run(data_root, tmp_path, monkeypatch,
                                                                            straight, kill_at):
    seen, committed = [], []

    def hooked(what, real):
        def call(*args, **kwargs):
            if what == "best candidate" and str(args[0]).endswith("last.pt"):
                return hooked("last.pt", real)(*args, **kwargs)
            seen.append(what)
            if what == kill_at and len(committed) == 1:  # during epoch 2's commit
                raise Killed
            result = real(*args, **kwargs)
            if what == "last.pt":
                committed.append(True)
            return result
        return call

    names = {"save_checkpoint": "best candidate", "append_metrics": "metrics row", "publish_best": "best rename"}
    originals = {name: getattr(run_dir_module, name) for name in names}
    for name, what in names.items():
        monkeypatch.setattr(run_dir_module, name, hooked(what, originals[name]))
    with pytest.raises(Killed):
        train(tiny_config(data_root, tmp_path / "b", *RUN))
    for name, real in originals.items():
        monkeypatch.setattr(run_dir_module, name, real)
    assert seen[:4] == WRITES  # one epoch's writes, in order: last.pt is the commit point

    train(None, resume=tmp_path / "b")
    last, best_epoch, rows = _state(tmp_path / "b")
    ref_last, ref_best, ref_rows = straight
    assert rows == ref_rows == [1, 2] and best_epoch == ref_best == 2
    assert last["epoch"] == 2 and last["best_epoch"] == 2
    for key, value in ref_last["model"].items():
        assert torch.allclose(value.float(), last["model"][key].float(), atol=1e-6), key
    assert not (tmp_path / "b" / run_dir_module.BEST_NEXT).exists()
    assert not [p.name for p in (tmp_path / "b").iterdir() if p.name.endswith(".tmp")]


def test_a_missing_best_pt_of_the_last_epoch_is_restored_from_last_pt(data_root, tmp_path, rising_validation):
    out = tmp_path / "run"
    train(tiny_config(data_root, out, "train.epochs=1", "train.steps_per_epoch=2", "data.val_classes=2"))
    (out / "best.pt").unlink()
    run_dir_module.recover_run_dir(out, read_checkpoint(out / "last.pt"))
    assert (out / "best.pt").read_bytes() == (out / "last.pt").read_bytes()


def test_a_hand_edited_best_pt_is_refused(data_root, tmp_path, monkeypatch):
    _validation(monkeypatch, [0.1, 0.3, 0.2])  # the best is epoch 2 of 3
    out = tmp_path / "run"
    train(tiny_config(data_root, out, "train.epochs=3", "train.steps_per_epoch=2", "data.val_classes=2"))
    state = read_checkpoint(out / "last.pt")
    assert (state["epoch"], state["best_epoch"], read_checkpoint(out / "best.pt")["epoch"]) == (3, 2, 2)
    edited = read_checkpoint(out / "best.pt")
    edited["epoch"] = 1
    torch.save(edited, out / "best.pt")
    with pytest.raises(TrainingError, match="best.pt holds epoch 1 but last.pt records the best model at epoch 2"):
        train(None, resume=out, overrides=["train.epochs=4"])


def test_overwrite_refuses_a_folder_that_is_not_a_run(data_root, tmp_path):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "thesis.txt").write_text("three years of work")
    with pytest.raises(TrainingError, match="not a run folder of this project .*thesis.txt"):
        train(tiny_config(data_root, out, "train.epochs=1"), overwrite=True)
    assert [p.name for p in out.iterdir()] == ["thesis.txt"]
    with pytest.raises(TrainingError, match="is a file"):
        train(tiny_config(data_root, out / "thesis.txt", "train.epochs=1"), overwrite=True)


def test_overwrite_killed_before_its_first_epoch_keeps_the_previous_run(data_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(tiny_config(data_root, out, "train.epochs=1", "train.steps_per_epoch=2"))
    before = (out / "last.pt").read_bytes()

    def dies(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(trainer, "commit_epoch", dies)
    with pytest.raises(Killed):
        train(tiny_config(data_root, out, "train.epochs=1", "train.steps_per_epoch=2", "train.seed=5"),
              overwrite=True)
    monkeypatch.undo()
    assert (out / "last.pt").read_bytes() == before  # the earlier complete run is still there
    train(tiny_config(data_root, out, "train.epochs=1", "train.steps_per_epoch=2", "train.seed=5"),
          overwrite=True)
    assert read_checkpoint(out / "last.pt")["config"]["train"]["seed"] == 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]  # staging folders cleaned up


def test_resume_applies_overrides_to_the_run_and_refuses_shape_changes(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny_config(data_root, out, "train.epochs=1", "train.steps_per_epoch=2"))
    code = train_cli.main(["--resume", str(out), "-q"])
    assert code == 0 and "nothing to train" in capsys.readouterr().out  # never "done: epoch -"
    code = train_cli.main(["--resume", str(out), "train.epochs=2", "--print-config"])
    assert code == 0 and "epochs: 2" in capsys.readouterr().out
    assert read_checkpoint(out / "last.pt")["epoch"] == 1  # --print-config runs nothing
    code = train_cli.main(["--resume", str(out), "model.embedding_dim=64", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "model.embedding_dim: run has 32, now 64" in err
    code = train_cli.main(["--resume", str(out), "train.epochs=2", "-q"])
    assert code == 0 and "done: epoch 2/2" in capsys.readouterr().out
    assert list(pd.read_csv(out / "metrics.csv")["epoch"]) == [1, 2]


def test_extending_a_cosine_run_stretches_the_schedule_to_the_new_end(data_root, tmp_path):
    # Decision (docs/training.md): the schedule is a function of (step, train.epochs); extending a
    # run recomputes it for the new total, so the cosine is stretched and the lr rises at the resume
    # step (a warm restart) before decaying to 0 at the new end.
    out = tmp_path / "run"
    train(tiny_config(data_root, out, "train.epochs=2", "train.steps_per_epoch=2"))
    train(None, resume=out, overrides=["train.epochs=4"])
    rows = pd.read_csv(out / "metrics.csv")
    cfg = tiny_config(data_root, out, "train.steps_per_epoch=2").optim
    # lr after each epoch's last step: epochs 1-2 on the 2-epoch cosine, 3-4 on the 4-epoch one
    expected = [1e-3 * lr_factor(step, cfg, 2, total) for step, total in zip(rows["step"], [2, 2, 4, 4])]
    assert rows["lr"].tolist() == pytest.approx(expected, abs=1e-12)
    assert abs(rows["lr"].iloc[1]) < 1e-12 < rows["lr"].iloc[2]  # the warm restart
