"""The training loop: build everything from the config, train, evaluate, checkpoint, resume.

Read top to bottom: ``train`` prepares the run (data, model, loss, optimizer, run folder),
then loops over epochs calling ``train_one_epoch`` and ``_end_of_epoch``.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import checkpoint_config, read_checkpoint, save_checkpoint
from ..config import Config, save_config, to_dict
from ..errors import TrainingError
from ..losses import RetrievalLoss
from ..optim import build_optimizer, build_scheduler
from ..progress import progress
from ..runtime import autocast, resolve_device, resolve_precision
from ..seeding import seed_everything
from . import distributed as dist_utils
from .rng import rng_state, set_rng_state
from .run_dir import append_metrics, attach_log_file, prepare_run_dir, tensorboard_writer, truncate_metrics

log = logging.getLogger(__name__)


class _TrainForward(torch.nn.Module):
    """DDP hooks ``forward`` only: expose ``forward_train`` (embeddings + logits) as forward."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor):
        return self.net.forward_train(images)


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    best: float = -1.0  # best Recall@1 so far
    metrics: dict = field(default_factory=dict)  # last evaluation


def _set_epoch(loader, epoch: int, seed: int, rank: int) -> None:
    """Batches and worker seeds as a pure function of (seed, epoch, rank): a resumed run replays them."""
    for obj in (loader.batch_sampler, loader.sampler):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
    if loader.generator is not None:
        loader.generator.manual_seed((seed * 1_000_003 + epoch) * 1009 + rank)


def _freeze_bn(model: torch.nn.Module) -> None:
    # CGD and Proxy-Anchor keep pretrained BatchNorm statistics fixed during fine-tuning.
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def _resume_config(cfg: Config | None, state: dict, run_dir: Path) -> Config:
    """The run's own config; a different one passed with --resume is an error listing the keys."""
    stored = checkpoint_config(state, run_dir / "last.pt")
    if cfg is None:
        return stored
    ignore = {("train", "epochs"), ("train", "out_dir")}  # extending a run is allowed
    new, old = to_dict(cfg), to_dict(stored)
    diffs = [f"{s}.{k}: run has {old[s][k]!r}, config has {new[s][k]!r}"
             for s in old for k in old[s] if (s, k) not in ignore and old[s][k] != new[s].get(k)]
    if diffs:
        raise TrainingError(f"--resume {run_dir}: the config differs from the run's:\n  " + "\n  ".join(diffs))
    stored.train.epochs = cfg.train.epochs
    return stored


@dataclass
class TrainResult:
    row: dict  # the last epoch's metrics.csv row (empty when nothing was left to train)
    model: torch.nn.Module  # the trained network (this rank's copy)
    run_dir: Path


def train(cfg: Config | None, resume: str | Path | None = None, overwrite: bool = False) -> TrainResult:
    """Train from ``cfg`` (or continue the run folder ``resume``); return the last row and the model."""
    from ..data import build_splits, build_train_loader
    from ..models import build_model

    state = None
    if resume is not None:
        run_dir = Path(resume)
        state = read_checkpoint(run_dir / "last.pt")
        cfg = _resume_config(cfg, state, run_dir)
        cfg.train.out_dir = str(run_dir)
    assert cfg is not None
    info = dist_utils.init_distributed(cfg.train.device)
    device = dist_utils.device_for(info, resolve_device(cfg.train.device))
    seed_everything(cfg.train.seed + info.rank)

    # Everything that can be wrong with the input fails here, before any training step.
    splits = build_splits(cfg.data)
    train_set = splits["train"]
    loader = build_train_loader(train_set, cfg.data, seed=cfg.train.seed, rank=info.rank, world_size=info.world_size)
    num_classes = train_set.num_classes if cfg.loss.cls_weight > 0 else 0
    model = build_model(cfg.model, num_classes=num_classes, load_weights=state is None)
    loss_fn = RetrievalLoss(cfg.loss, train_set.num_classes, cfg.model.embedding_dim, distributed=info.enabled)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    loss_fn.to(device)
    steps_per_epoch = len(loader) if cfg.train.steps_per_epoch <= 0 else min(len(loader), cfg.train.steps_per_epoch)
    optimizer = build_optimizer(cfg.optim, model, loss_fn, cfg.loss.proxy_lr_mult)
    scheduler = build_scheduler(cfg.optim, optimizer, steps_per_epoch, cfg.train.epochs)
    dtype = resolve_precision(cfg.train.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    ts = TrainState()
    if state is not None:
        _load_state(state, model, loss_fn, optimizer, scheduler, ts)
    dist_utils.broadcast_parameters(loss_fn, info)
    run_dir = Path(cfg.train.out_dir)
    writer = handler = None
    if info.is_main:
        prepare_run_dir(run_dir, overwrite=overwrite, resume=state is not None)
        truncate_metrics(run_dir / "metrics.csv", ts.epoch)
        save_config(cfg, run_dir / "config.yaml")
        handler = attach_log_file(run_dir / "train.log")
        writer = tensorboard_writer(run_dir / "tb")
    log.info("training %s on %s (%s, %d train images, %d classes, %d steps/epoch, precision %s, world %d)",
             cfg.model.backbone, device, cfg.data.name, len(train_set), train_set.num_classes,
             steps_per_epoch, dtype or "fp32", info.world_size)
    net = _TrainForward(model)
    if info.enabled:
        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    row: dict = {}
    try:
        while ts.epoch < cfg.train.epochs:
            _set_epoch(loader, ts.epoch, cfg.train.seed, info.rank)
            stats = train_one_epoch(net, model, loss_fn, loader, optimizer, scheduler, scaler, cfg, ts,
                                    device, dtype, memory_format, steps_per_epoch, info)
            ts.epoch += 1
            row = _end_of_epoch(cfg, ts, stats, model, loss_fn, optimizer, scheduler, splits, device, info,
                                num_classes, run_dir, writer)
    finally:
        if handler is not None:
            logging.getLogger("retrieval").removeHandler(handler)
            handler.close()
        if writer is not None:
            writer.close()
        dist_utils.shutdown(info)
    return TrainResult(row=row, model=model, run_dir=run_dir)


def train_one_epoch(net, model, loss_fn, loader, optimizer, scheduler, scaler, cfg: Config, ts: TrainState,
                    device, dtype, memory_format, steps: int, info) -> dict:
    """One pass of ``steps`` batches; returns mean losses and images/s."""
    net.train()
    if cfg.train.freeze_bn:
        _freeze_bn(model)
    totals = {"loss": 0.0, "metric_loss": 0.0, "cls_loss": 0.0}
    seen, start = 0, time.perf_counter()
    bar = progress(total=steps, desc=f"epoch {ts.epoch + 1}/{cfg.train.epochs}", disable=not info.is_main,
                   leave=False)
    for i, (images, labels) in enumerate(loader):
        if i >= steps:
            break
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)
        with autocast(device, dtype):
            embeddings, logits = net(images)
        out = loss_fn(embeddings, logits, labels)
        if not torch.isfinite(out.total):
            raise TrainingError(
                f"non-finite loss ({out.total.item()}) at epoch {ts.epoch + 1}, step {i + 1} (global step "
                f"{ts.step + 1}); stopped, the last good checkpoint is {Path(cfg.train.out_dir) / 'last.pt'}. "
                "Try a lower optim.lr or train.precision=fp32.")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(out.total).backward()
        dist_utils.sync_loss_gradients(loss_fn, info)
        if cfg.train.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        ts.step += 1
        seen += images.shape[0]
        totals["loss"] += out.total.item()
        totals["metric_loss"] += out.metric.item()
        totals["cls_loss"] += out.cls.item()
        ips = seen * info.world_size / (time.perf_counter() - start)
        bar.set_postfix(loss=f"{out.total.item():.4f}", img_s=f"{ips:.0f}")
        bar.update()
    bar.close()
    elapsed = time.perf_counter() - start
    n = max(1, min(steps, i + 1))
    return {**{k: v / n for k, v in totals.items()}, "images_per_s": seen * info.world_size / elapsed,
            "epoch_time_s": elapsed, "lr": optimizer.param_groups[0]["lr"]}


def _end_of_epoch(cfg: Config, ts: TrainState, stats: dict, model, loss_fn, optimizer, scheduler, splits, device,
                  info, num_classes: int, run_dir: Path, writer) -> dict:
    """Evaluate when due, write metrics.csv and checkpoints (rank 0), keep ranks in step."""
    from ..evaluate import evaluate_splits

    dist_utils.broadcast_buffers(model, info)
    due = ts.epoch == cfg.train.epochs or (cfg.train.eval_every > 0 and ts.epoch % cfg.train.eval_every == 0)
    metrics: dict = {}
    if due and info.is_main:
        metrics = evaluate_splits(model, splits, cfg, device)
        ts.metrics = metrics
    row = {"epoch": ts.epoch, "step": ts.step, **stats, **metrics}
    if info.is_main:
        key = f"recall@{min(cfg.eval.recall_k)}"
        improved = key in metrics and metrics[key] > ts.best
        if improved:
            ts.best = metrics[key]
        ckpt = _checkpoint_state(cfg, ts, model, loss_fn, optimizer, scheduler, num_classes)
        save_checkpoint(run_dir / "last.pt", ckpt)
        if improved:
            save_checkpoint(run_dir / "best.pt", ckpt)
        append_metrics(run_dir / "metrics.csv", row)
        shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        log.info("epoch %d/%d loss %.4f (%.0f img/s, %.1f s) %s", ts.epoch, cfg.train.epochs, stats["loss"],
                 stats["images_per_s"], stats["epoch_time_s"], shown)
        if writer is not None:
            for k, v in row.items():
                if k not in ("epoch", "step") and isinstance(v, float) and math.isfinite(v):
                    writer.add_scalar(k, v, ts.epoch)
    dist_utils.barrier(info)
    return row


def _checkpoint_state(cfg, ts: TrainState, model, loss_fn, optimizer, scheduler, num_classes: int) -> dict:
    return {
        "model": model.state_dict(), "loss": loss_fn.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "epoch": ts.epoch, "step": ts.step, "best": ts.best,
        "config": to_dict(cfg), "num_classes": num_classes, "metrics": dict(ts.metrics), "rng": rng_state(),
    }


def _load_state(state: dict, model, loss_fn, optimizer, scheduler, ts: TrainState) -> None:
    """Restore a checkpoint written by ``_checkpoint_state`` (the run continues after its epoch)."""
    model.load_state_dict(state["model"])
    loss_fn.load_state_dict(state["loss"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    ts.epoch, ts.step, ts.best = int(state["epoch"]), int(state["step"]), float(state["best"])
    ts.metrics = dict(state.get("metrics", {}))
    set_rng_state(state["rng"])
    log.info("resumed at epoch %d (step %d)", ts.epoch, ts.step)
