"""The training loop on a tiny generated data set: run folder, resume, errors, DDP with 2 CPU ranks."""
import os
import socket

import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

from retrieval.checkpoint import read_checkpoint
from retrieval.config import load_config
from retrieval.engine import train, trainer
from retrieval.errors import DataError, TrainingError
from retrieval.losses import RetrievalLoss

from .conftest import TINY, tiny_config as _cfg


def test_run_folder_contents(data_root, tmp_path):
    out = tmp_path / "run"
    result = train(_cfg(data_root, out, "train.epochs=2", "data.val_classes=2"))
    assert {"config.yaml", "metrics.csv", "last.pt", "best.pt", "train.log"} <= {p.name for p in out.iterdir()}
    frame = pd.read_csv(out / "metrics.csv")
    assert list(frame["epoch"]) == [1, 2]
    for col in ("loss", "lr", "images_per_s", "recall@1", "recall@2", "map@r", "mean_norm", "val_recall@1"):
        assert col in frame and frame[col].notna().all()
    state = read_checkpoint(out / "last.pt")  # weights_only=True inside
    assert state["epoch"] == 2 and state["num_classes"] == 4  # 6 train classes, 2 held out for validation
    best = read_checkpoint(out / "best.pt")  # chosen on the validation classes, not on the test classes
    assert best["epoch"] == int(frame.loc[frame["val_recall@1"].idxmax(), "epoch"])
    assert set(state) >= {"model", "loss", "optimizer", "scheduler", "rng", "config", "versions", "metrics"}
    assert result.row["epoch"] == 2 and 0.0 <= result.row["recall@1"] <= 1.0
    assert "epoch 2/2" in (out / "train.log").read_text()


def test_without_validation_classes_there_is_no_best_pt(data_root, tmp_path, caplog):
    out = tmp_path / "run"
    train(_cfg(data_root, out, "train.epochs=1"))
    assert (out / "last.pt").is_file() and not (out / "best.pt").exists()
    assert "data.val_classes=0" in caplog.text


def test_training_spreads_the_embeddings_instead_of_a_cone(data_root, tmp_path):
    # triplet loss alone, as in issue #10's collapse; the control without the centring BN makes a cone.
    # 24 steps: BatchNorm's running mean (momentum 0.1) has then reached 1 - 0.9^24 = 92 % of the batch mean.
    extra = ("train.epochs=8", "train.eval_every=0", "loss.cls_weight=0", "model.descriptors=S",
             "data.num_workers=0")
    spread = train(_cfg(data_root, tmp_path / "bn", *extra)).row
    cone = train(_cfg(data_root, tmp_path / "plain", *extra, "model.embedding_bn=false")).row
    # Unseen classes after 24 steps of a nearly random backbone keep part of their own mean (0.78 here);
    # a trained model's is far lower (CUB_mini: RESULTS.md), a cone's is 0.99+.
    assert spread["mean_norm"] < 0.9 < 0.97 < cone["mean_norm"]


def test_freeze_bn_freezes_the_backbone_and_the_centring_bn_still_learns(data_root, tmp_path):
    train(_cfg(data_root, tmp_path / "run", "train.epochs=1", "train.eval_every=0", "train.freeze_bn=true"))
    state = read_checkpoint(tmp_path / "run" / "last.pt")["model"]
    backbone = [k for k in state if k.startswith("backbone.") and k.endswith("running_mean")]
    head = [k for k in state if k.startswith("head.") and k.endswith("running_mean")]
    assert backbone and head
    assert all(torch.equal(state[k], torch.zeros_like(state[k])) for k in backbone)  # statistics as built
    assert all(state[k].abs().max() > 0 for k in head)  # the centring (and classifier) BN moved


def test_existing_run_is_not_overwritten(data_root, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("keep: me\n")
    (out / "metrics.csv").write_text("keep me\n")
    with pytest.raises(FileExistsError, match="--overwrite"):
        train(_cfg(data_root, out, "train.epochs=1"))
    assert (out / "metrics.csv").read_text() == "keep me\n"
    train(_cfg(data_root, out, "train.epochs=1"), overwrite=True)
    assert len(pd.read_csv(out / "metrics.csv")) == 1


def test_resume_continues_exactly(data_root, tmp_path, monkeypatch):
    # one loader worker: its random crops must replay too (worker seeds per epoch)
    extra = ("train.epochs=2", "loss.name=proxy_anchor", "loss.miner=none", "data.num_workers=1")
    straight = train(_cfg(data_root, tmp_path / "a", *extra))
    end_of_epoch = trainer.end_of_epoch

    def killed_after_first_epoch(run, stats):
        end_of_epoch(run, stats)
        raise KeyboardInterrupt  # the run dies right after epoch 1's checkpoint

    monkeypatch.setattr(trainer, "end_of_epoch", killed_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(data_root, tmp_path / "b", *extra))
    monkeypatch.setattr(trainer, "end_of_epoch", end_of_epoch)
    resumed = train(None, resume=tmp_path / "b")
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    proxies_a = read_checkpoint(tmp_path / "a" / "last.pt")["loss"]
    proxies_b = read_checkpoint(tmp_path / "b" / "last.pt")["loss"]
    assert all(torch.allclose(proxies_a[k], proxies_b[k], atol=1e-6) for k in proxies_a)
    assert list(pd.read_csv(tmp_path / "b" / "metrics.csv")["epoch"]) == [1, 2]


def test_resume_with_another_config_is_refused(data_root, tmp_path):
    train(_cfg(data_root, tmp_path / "r", "train.epochs=1"))
    with pytest.raises(TrainingError, match="model.embedding_dim"):
        train(_cfg(data_root, tmp_path / "r", "train.epochs=2", "model.embedding_dim=64"), resume=tmp_path / "r")


def test_missing_dataset_root_fails_before_training(tmp_path):
    cfg = load_config(None, TINY + ["data.name=cub", f"data.root={tmp_path / 'nope'}", f"train.out_dir={tmp_path / 'run'}"])
    with pytest.raises(DataError, match="nope"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(data_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(_cfg(data_root, out, "train.epochs=1"))
    good = (out / "last.pt").read_bytes()
    forward = RetrievalLoss.forward

    def poisoned(self, embeddings, logits, labels):
        result = forward(self, embeddings, logits, labels)
        result.total = result.total * float("nan")
        return result

    monkeypatch.setattr(RetrievalLoss, "forward", poisoned)
    with pytest.raises(TrainingError, match=r"epoch 2, step 1"):
        train(_cfg(data_root, out, "train.epochs=2"), resume=out)
    assert (out / "last.pt").read_bytes() == good


def _ddp_worker(rank, world, port, overrides, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    result = train(load_config(None, overrides))
    torch.save({k: v.detach().clone() for k, v in result.model.state_dict().items()}, f"{out_dir}/rank{rank}.pt")


@pytest.mark.slow
def test_ddp_two_cpu_ranks_end_identical(data_root, tmp_path):
    train(_cfg(data_root, tmp_path / "warm", "train.epochs=1", "train.steps_per_epoch=1"))  # generate the data once
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    overrides = TINY + [f"data.root={data_root}", f"train.out_dir={tmp_path / 'ddp'}", "train.epochs=1",
                        "data.batch_size=8", "loss.name=proxy_anchor", "loss.miner=none", "train.device=cpu"]
    mp.start_processes(_ddp_worker, args=(2, port, overrides, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    saved = read_checkpoint(tmp_path / "ddp" / "last.pt")  # written by rank 0 only
    assert saved["step"] == 3 and all(torch.equal(saved["model"][k], a[k]) for k in a)


def test_compiled_training_follows_the_eager_one(data_root, tmp_path, monkeypatch, caplog):
    """train.compile runs the training forward through torch.compile (dynamo with the eager backend here:
    the wiring without minutes of C++ compilation) and trains the same network, to float tolerance."""
    import retrieval.execution

    monkeypatch.setattr(retrieval.execution, "COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    steps = ["train.epochs=1", "train.steps_per_epoch=3", "train.precision=fp32", "train.eval_every=0"]
    eager = train(_cfg(data_root, tmp_path / "eager", *steps)).row
    with caplog.at_level("INFO", logger="retrieval.execution"):
        compiled = train(_cfg(data_root, tmp_path / "compiled", *steps, "train.compile=true")).row
    assert any("compiled the training network" in r.getMessage() for r in caplog.records)
    assert not any("failed" in r.getMessage() for r in caplog.records)
    assert compiled["metric_loss"] == pytest.approx(eager["metric_loss"], rel=1e-3, abs=1e-4)
    assert compiled["recall@1"] == pytest.approx(eager["recall@1"], abs=0.02)
