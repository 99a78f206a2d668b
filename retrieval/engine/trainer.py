"""The training loop: set up the run, train epochs, evaluate, checkpoint; resume a run folder.

Read top to bottom: ``train`` builds the run (``run.setup_run``), then for each epoch calls
``train_one_epoch`` (steps of ``train_step``) and ``end_of_epoch`` (evaluation, run folder).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import TrainingError
from ..losses import LossOutput
from ..progress import progress
from ..runtime import autocast
from ..schema import Config
from .. import parallel
from .run import Run, close_run, setup_run
from .run_dir import commit_epoch, replace_with_staging

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    row: dict  # the last epoch's metrics.csv row (empty when nothing was left to train)
    model: torch.nn.Module  # the trained network (this rank's copy)
    run_dir: Path
    epoch: int = 0  # epochs the run has completed
    epochs: int = 0  # train.epochs


def train(cfg: Config | None, resume: str | Path | None = None, overwrite: bool = False,
          overrides: list[str] | tuple = ()) -> TrainResult:
    """Train from ``cfg`` (or continue the run folder ``resume``, with ``overrides`` to its config).

    Returns the last epoch's row (empty when the run had already finished), the model and the run folder.
    """
    run = setup_run(cfg, resume, overwrite, overrides)
    row: dict = {}
    finished = False
    try:
        while run.progress.epoch < run.cfg.train.epochs:
            _set_epoch(run)
            stats = train_one_epoch(run)
            run.progress.epoch += 1
            row = end_of_epoch(run, stats)
        finished = True
    finally:
        close_run(run, finished)
    return TrainResult(row=row, model=run.model, run_dir=run.final_dir, epoch=run.progress.epoch,
                       epochs=run.cfg.train.epochs)


def _set_epoch(run: Run) -> None:
    """Batches and worker seeds as a pure function of (seed, epoch, rank): a resumed run replays them."""
    loader, epoch = run.loader, run.progress.epoch
    for obj in (loader.batch_sampler, loader.sampler):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
    if loader.generator is not None:
        loader.generator.manual_seed((run.cfg.train.seed * 1_000_003 + epoch) * 1009 + run.info.rank)


def _freeze_bn(backbone: torch.nn.Module) -> None:
    # CGD and Proxy-Anchor keep the pretrained backbone's BatchNorm statistics fixed during fine-tuning
    # (Proxy-Anchor's code: model.model.apply(set_bn_eval), the backbone only). The head's BatchNorms
    # are new: the centring BN must keep learning its running mean, else it centres nothing.
    for module in backbone.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def train_step(run: Run, images: torch.Tensor, labels: torch.Tensor) -> LossOutput:
    """Forward, loss, backward and optimizer step on one batch; TrainingError on a non-finite loss."""
    images = images.to(run.device, non_blocking=True, memory_format=run.memory_format)
    labels = labels.to(run.device, non_blocking=True)
    with autocast(run.device, run.dtype):
        embeddings, logits = run.forward(images)
    out = run.loss(embeddings, logits, labels)
    if not torch.isfinite(out.total):
        p = run.progress
        raise TrainingError(
            f"non-finite loss ({out.total.item()}) at epoch {p.epoch + 1}, step "
            f"{p.step - p.epoch * run.steps_per_epoch + 1} (global step {p.step + 1}); stopped, the last good checkpoint is {run.run_dir / 'last.pt'}. "
            "Try a lower optim.lr or train.precision=fp32.")
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(out.total).backward()
    parallel.sync_loss_gradients(run.loss, run.info)
    if run.cfg.train.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.train.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    run.progress.step += 1
    return out


def train_one_epoch(run: Run) -> dict:
    """One pass of ``run.steps_per_epoch`` batches; returns mean losses, images/s, time and lr."""
    run.net.train()
    if run.cfg.train.freeze_bn:
        _freeze_bn(run.model.backbone)
    totals = {"loss": 0.0, "metric_loss": 0.0, "cls_loss": 0.0}
    seen, steps, start = 0, 0, time.perf_counter()
    bar = progress(total=run.steps_per_epoch, desc=f"epoch {run.progress.epoch + 1}/{run.cfg.train.epochs}",
                   disable=not run.info.is_main, leave=False)
    for images, labels in run.loader:
        if steps >= run.steps_per_epoch:
            break
        out = train_step(run, images, labels)
        steps, seen = steps + 1, seen + images.shape[0]
        for key, value in (("loss", out.total), ("metric_loss", out.metric), ("cls_loss", out.cls)):
            totals[key] += value.item()
        bar.set_postfix(loss=f"{out.total.item():.4f}",
                        img_s=f"{seen * run.info.world_size / (time.perf_counter() - start):.0f}")
        bar.update()
    bar.close()
    elapsed = time.perf_counter() - start
    return {**{k: v / max(1, steps) for k, v in totals.items()}, "images_per_s": seen * run.info.world_size / elapsed,
            "epoch_time_s": elapsed, "lr": run.optimizer.param_groups[0]["lr"]}


def _evaluate_if_due(run: Run) -> dict:
    """Test metrics on rank 0 every ``train.eval_every`` epochs and after the last one."""
    from ..evaluate import evaluate_splits

    cfg, epoch = run.cfg, run.progress.epoch
    due = epoch == cfg.train.epochs or (cfg.train.eval_every > 0 and epoch % cfg.train.eval_every == 0)
    if not (due and run.info.is_main):
        return {}
    run.progress.metrics = evaluate_splits(run.embedder, run.splits, cfg)
    return run.progress.metrics


def _write_epoch(run: Run, row: dict, metrics: dict) -> None:
    """Rank 0: last.pt, best.pt when validation Recall@min(K) improved, the metrics.csv row, the log line.

    best.pt is chosen on the validation classes only (``data.val_classes``); without them there is
    no best.pt: choosing on the test classes would report a selected, inflated number.
    """
    key = f"val_recall@{min(run.cfg.eval.recall_k)}"
    improved = key in metrics and metrics[key] > run.progress.best
    if improved:
        run.progress.best, run.progress.best_epoch = metrics[key], run.progress.epoch
    commit_epoch(run.run_dir, run.checkpoint(), row, improved)
    if run.run_dir != run.final_dir:  # --overwrite: the new run now has an epoch to replace the old one with
        replace_with_staging(run.run_dir, run.final_dir)
        run.run_dir = run.final_dir
    log.info("epoch %d/%d loss %.4f (%.0f img/s, %.1f s) %s", run.progress.epoch, run.cfg.train.epochs,
             row["loss"], row["images_per_s"], row["epoch_time_s"],
             " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    if run.writer is not None:
        for k, v in row.items():
            if k not in ("epoch", "step") and isinstance(v, float) and math.isfinite(v):
                run.writer.add_scalar(k, v, run.progress.epoch)


def end_of_epoch(run: Run, stats: dict) -> dict:
    """Evaluate when due, write the run folder (rank 0), keep ranks in step; returns the metrics.csv row."""
    parallel.broadcast_buffers(run.model, run.info)
    metrics = _evaluate_if_due(run)
    row = {"epoch": run.progress.epoch, "step": run.progress.step, **stats, **metrics}
    if run.info.is_main:
        _write_epoch(run, row, metrics)
    parallel.barrier(run.info)
    return row
