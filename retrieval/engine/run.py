"""One training run's state (``Run``) and ``setup_run``, which builds it from a config or a run folder.

Everything that can be wrong with the input (config, data, a resumed run that does not fit)
fails in ``setup_run``, before the first training step.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import checkpoint_config, read_checkpoint
from ..config import config_from_dict, load_config, save_config, to_dict
from ..embed import Embedder
from ..errors import TrainingError
from ..files import remove_stale_temporaries
from ..losses import RetrievalLoss
from ..optim import build_optimizer, build_scheduler
from ..runtime import resolve_device
from ..schema import Config
from ..seeding import seed_everything
from .. import parallel
from ..execution import CompiledOrEager
from .rng import rng_state, set_rng_state
from .run_dir import WRITTEN, attach_log_file, check_run_dir, prepare_run_dir, recover_run_dir, tensorboard_writer

log = logging.getLogger(__name__)


class TrainForward(torch.nn.Module):
    """DDP hooks ``forward`` only: expose ``forward_train`` (embeddings + logits) as forward."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor):
        return self.net.forward_train(images)


@dataclass
class Progress:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    best: float = -1.0  # best validation Recall@1 so far (-1: none yet, or no validation split)
    best_epoch: int | None = None  # the epoch best.pt holds
    metrics: dict = field(default_factory=dict)  # last evaluation


@dataclass
class Run:
    """What the training loop reads and updates, built once by ``setup_run``."""
    cfg: Config
    info: parallel.DistInfo
    embedder: Embedder  # the model on its device, with its autocast dtype and memory format: training and evaluation
    splits: dict[str, Any]  # "train" plus "test" or "query" / "gallery" datasets
    loader: torch.utils.data.DataLoader
    model: torch.nn.Module  # the RetrievalNet (what is evaluated and checkpointed)
    net: torch.nn.Module  # the model's training forward, DDP-wrapped when distributed
    loss: RetrievalLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    steps_per_epoch: int
    num_classes: int  # classifier outputs (0 without the classification loss)
    run_dir: Path  # where the run writes now: the run folder, or its staging folder until the first commit
    final_dir: Path  # the run folder (train.out_dir)
    progress: Progress = field(default_factory=Progress)
    writer: Any = None  # TensorBoard SummaryWriter (rank 0, when installed)
    log_handler: logging.Handler | None = None
    forward: Any = None  # calls ``net``: the module itself, or its torch.compile (train.compile)

    @property
    def device(self) -> torch.device:
        return self.embedder.device

    @property
    def dtype(self) -> torch.dtype | None:
        """Autocast dtype, None = fp32."""
        return self.embedder.dtype

    @property
    def memory_format(self) -> torch.memory_format:
        return self.embedder.memory_format

    def checkpoint(self) -> dict:
        """The checkpoint dict of the current state (DESIGN.md "Checkpoint")."""
        p = self.progress
        return {
            "model": self.model.state_dict(), "loss": self.loss.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "epoch": p.epoch, "step": p.step, "best": p.best,
            "best_epoch": p.best_epoch,
            "config": to_dict(self.cfg), "num_classes": self.num_classes, "metrics": dict(p.metrics),
            "rng": rng_state(),
        }

    def restore(self, state: dict) -> None:
        """Continue from a checkpoint written by ``checkpoint`` (the run goes on after its epoch)."""
        self.model.load_state_dict(state["model"])
        self.loss.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        p = self.progress
        p.epoch, p.step, p.best = int(state["epoch"]), int(state["step"]), float(state["best"])
        p.best_epoch = state.get("best_epoch")
        p.metrics = dict(state.get("metrics", {}))
        set_rng_state(state["rng"])
        log.info("resumed at epoch %d (step %d)", p.epoch, p.step)


# Keys a resumed run may change: they do not change what the checkpoint's weights, optimizer
# state and data order mean (anything else would make last.pt describe another run).
RESUMABLE = {("train", "epochs"), ("train", "eval_every"), ("train", "device"), ("train", "out_dir"),
             ("data", "num_workers"), ("data", "cache"), ("eval", "batch_size"), ("eval", "chunk_size"),
             ("eval", "recall_k"), ("eval", "map_at_r")}


def _resume_config(stored: Config, cfg: Config, run_dir: Path) -> Config:
    """``cfg`` if it differs from the run's ``stored`` config only in RESUMABLE keys; TrainingError listing the rest."""
    new, old = to_dict(cfg), to_dict(stored)
    diffs = [(s, k) for s in old for k in old[s] if old[s][k] != new[s].get(k)]
    refused = [f"{s}.{k}: run has {old[s][k]!r}, now {new[s][k]!r}" for s, k in diffs if (s, k) not in RESUMABLE]
    if refused:
        allowed = ", ".join(sorted(f"{s}.{k}" for s, k in RESUMABLE))
        raise TrainingError(f"--resume {run_dir}: these keys differ from the run's and would change what its "
                            "checkpoint means:\n  " + "\n  ".join(refused) + f"\n(a resumed run may change: {allowed})")
    for s, k in diffs:
        if (s, k) != ("train", "out_dir"):
            log.warning("--resume: %s.%s %r → %r", s, k, old[s][k], new[s][k])
    return cfg


def _override_text(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _check_config_yaml(run_dir: Path, stored: Config, cfg: Config) -> None:
    """TrainingError when the run's config.yaml was edited (differs from last.pt's config) and the edit is not what
    the resumed run uses: resume continues last.pt's config and rewrites config.yaml, so the edit would be lost."""
    from ..errors import ConfigError

    path = run_dir / "config.yaml"
    if not path.is_file():
        return
    try:
        edited = to_dict(load_config(path, []))
    except ConfigError as err:
        raise TrainingError(f"--resume {run_dir}: config.yaml cannot be read ({err}); resume continues last.pt's "
                            "config: undo the edit, or pass changes as overrides section.key=value") from None
    old, new = to_dict(stored), to_dict(cfg)
    lost = [(s, k) for s in old for k in old[s] if (s, k) != ("train", "out_dir")
            and edited.get(s, {}).get(k, old[s][k]) != old[s][k] and edited[s][k] != new[s].get(k)]
    if lost:
        keys = "; ".join(f"{s}.{k}: last.pt has {old[s][k]!r}, config.yaml {edited[s][k]!r}" for s, k in lost)
        given = " ".join(f"{s}.{k}={_override_text(edited[s][k])}" for s, k in lost)
        raise TrainingError(f"--resume {run_dir}: config.yaml was edited after last.pt was written ({keys}); resume "
                            "continues last.pt's config and rewrites config.yaml, so pass the changes as overrides: "
                            f"--resume {run_dir} {given} (or undo the edit in config.yaml)")


def resumed_config(resume: str | Path, cfg: Config | None = None, overrides: list[str] | tuple = ()) -> Config:
    """The config a resumed run continues with: ``cfg`` (--config) or the run's own, plus ``overrides``, checked."""
    run_dir = Path(resume)
    if run_dir.is_dir() and not (run_dir / "last.pt").exists() and (run_dir / "config.yaml").is_file():
        raise TrainingError(f"--resume {run_dir}: it has no last.pt: the run stopped before its first epoch "
                            f"committed, so there is nothing to resume; start it again with --config "
                            f"{run_dir / 'config.yaml'} --overwrite")
    stored = checkpoint_config(read_checkpoint(run_dir / "last.pt"), run_dir / "last.pt", resume=True)
    if cfg is None:
        cfg = config_from_dict(to_dict(stored), list(overrides), stored=True)
    cfg.train.out_dir = str(run_dir)
    _check_config_yaml(run_dir, stored, cfg)
    return _resume_config(stored, cfg, run_dir)


def _run_config(cfg: Config | None, resume: str | Path | None, overrides) -> tuple[Config, dict | None]:
    """(config, checkpoint state or None): the given config, or the resumed run's (checked against it)."""
    if resume is None:
        if cfg is None:
            raise TrainingError("train: give a config or a run folder to resume")
        return cfg, None
    cfg = resumed_config(resume, cfg, overrides)
    return cfg, read_checkpoint(Path(resume) / "last.pt")


def _open_run_dir(run: Run, overwrite: bool, state: dict | None) -> None:
    """Rank 0: the run folder (repaired on resume), its config.yaml, train.log and TensorBoard writer."""
    if not run.info.is_main:
        return
    run.run_dir = prepare_run_dir(run.final_dir, overwrite=overwrite, resume=state is not None)
    if state is not None:
        recover_run_dir(run.run_dir, state)
    remove_stale_temporaries(run.run_dir, WRITTEN)
    remove_stale_temporaries(run.final_dir.parent, (run.final_dir.name,))
    save_config(run.cfg, run.run_dir / "config.yaml")
    run.log_handler = attach_log_file(run.run_dir / "train.log")
    run.writer = tensorboard_writer(run.run_dir / "tb")


def setup_run(cfg: Config | None, resume: str | Path | None = None, overwrite: bool = False,
              overrides: list[str] | tuple = ()) -> Run:
    """Build the run: data, model, loss, optimizer, schedule, run folder; restore ``resume``'s last.pt.

    overrides: with ``resume`` and no ``cfg``, ``section.key=value`` changes to the run's own config.
    """
    from ..data import build_splits, build_train_loader
    from ..models import build_model

    cfg, state = _run_config(cfg, resume, overrides)
    check_run_dir(cfg.train.out_dir, overwrite, resume=state is not None)
    info = parallel.init_distributed(cfg.train.device)
    device = parallel.device_for(info, resolve_device(cfg.train.device))
    seed_everything(cfg.train.seed + info.rank)
    splits = build_splits(cfg.data)
    loader = build_train_loader(splits["train"], cfg.data, seed=cfg.train.seed, rank=info.rank,
                                world_size=info.world_size)
    num_classes = splits["train"].num_classes if cfg.loss.cls_weight > 0 else 0
    model = build_model(cfg.model, num_classes=num_classes, load_weights=state is None)
    loss = RetrievalLoss(cfg.loss, splits["train"].num_classes, cfg.model.embedding_dim, distributed=info.enabled)
    embedder = Embedder(model, device, cfg.train.precision, cfg.train.channels_last, cfg.eval.batch_size,
                        cfg.data.num_workers, flag="train.precision")
    loss.to(device)
    steps = len(loader) if cfg.train.steps_per_epoch <= 0 else min(len(loader), cfg.train.steps_per_epoch)
    optimizer = build_optimizer(cfg.optim, model, loss)
    net = TrainForward(model)
    if info.enabled:
        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    forward = CompiledOrEager(net, what="the training network") if cfg.train.compile else net
    run = Run(cfg=cfg, info=info, embedder=embedder, splits=splits, forward=forward,
              loader=loader, model=model, net=net, loss=loss, optimizer=optimizer,
              scheduler=build_scheduler(cfg.optim, optimizer, steps, cfg.train.epochs),
              scaler=torch.amp.GradScaler(device.type, enabled=embedder.dtype == torch.float16), steps_per_epoch=steps,
              num_classes=num_classes, run_dir=Path(cfg.train.out_dir), final_dir=Path(cfg.train.out_dir))
    if state is not None:
        run.restore(state)
    parallel.broadcast_parameters(loss, info)
    _open_run_dir(run, overwrite, state)
    _log_start(run)
    return run


def _log_start(run: Run) -> None:
    cfg, train_set = run.cfg, run.splits["train"]
    if "val" not in run.splits:
        log.info("no validation classes (data.val_classes=0): best.pt is not chosen; the final model is last.pt")
    log.info("training %s on %s (%s, %d train images, %d classes, %d steps/epoch, precision %s, world %d)",
             cfg.model.backbone, run.device, cfg.data.name, len(train_set), train_set.num_classes,
             run.steps_per_epoch, run.dtype or "fp32", run.info.world_size)


def close_run(run: Run, finished: bool) -> None:
    """Detach the log file, close TensorBoard, leave the process group; drop a staging folder that never replaced
    the earlier run (the new run failed before its first epoch committed)."""
    if run.log_handler is not None:
        logging.getLogger("retrieval").removeHandler(run.log_handler)
        run.log_handler.close()
    if run.writer is not None:
        run.writer.close()
    parallel.shutdown(run.info)
    if not finished and run.run_dir != run.final_dir and run.run_dir.exists():
        shutil.rmtree(run.run_dir, ignore_errors=True)
        log.warning("the new run stopped before its first epoch; %s is unchanged", run.final_dir)
