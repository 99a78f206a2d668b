"""Training images/s of the project's loop settings vs a plain fp32 loop, side by side.

Same model (CBAM-ResNet + CGD head), same batch, same loss; the only differences are the
ones the training loop applies: bf16 autocast (where the CPU has native bf16, AMP on CUDA)
and channels_last. The two loops alternate in rounds so machine noise hits both alike.
Data comes from memory (random tensors) so the ratio measures the model step, not decoding.
``--compile`` adds a third loop: the project loop with ``train.compile=true`` (torch.compile of
the training forward pass; its compilation time is the first step's, reported apart).

    python -m benchmarks.bench_train_speed --backbone resnet18 --size 128 --batch 64 --compile
"""
from __future__ import annotations

import argparse
import time

import torch

from retrieval.config import LossConfig, ModelConfig, OptimConfig
from retrieval.losses import RetrievalLoss
from retrieval.models import build_model
from retrieval.optim import build_optimizer
from retrieval.embed import Embedder
from retrieval.engine.run import TrainForward
from retrieval.execution import CompiledOrEager
from retrieval.runtime import autocast, resolve_device

from .common import header, machine_line, write_results


def _step_fn(forward, loss_fn, opt, images, labels, dtype, device):
    def step():
        with autocast(device, dtype):
            emb, logits = forward(images)
        out = loss_fn(emb, logits, labels)
        opt.zero_grad(set_to_none=True)
        out.total.backward()
        opt.step()
    return step


def _setup(args, precision: str, channels_last: bool, device, compile: bool = False):
    """(one training step, its autocast dtype): the model placed as ``setup_run`` places it (an Embedder);
    compile: its forward pass through ``torch.compile`` as ``train.compile=true`` runs it."""
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=args.backbone, embedding_dim=args.dim, descriptors=args.descriptors,
                      attention="none" if args.no_cbam else "cbam")
    classes = args.batch // 4
    placed = Embedder(build_model(cfg, num_classes=classes).train(), device, precision, channels_last,
                      flag="train.precision")
    loss_fn = RetrievalLoss(LossConfig(), classes, args.dim)
    opt = build_optimizer(OptimConfig(), placed.model, loss_fn)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(
        memory_format=placed.memory_format)
    labels = torch.arange(classes, device=device).repeat_interleave(4)
    forward = TrainForward(placed.model)
    if compile:
        forward = CompiledOrEager(forward, what="the training network")
    return _step_fn(forward, loss_fn, opt, images, labels, placed.dtype, device), placed.dtype


def run(args) -> dict:
    device = resolve_device(args.device)
    plain, _ = _setup(args, "fp32", False, device)
    fast, fast_dtype = _setup(args, "auto", True, device)
    project = f"project loop ({fast_dtype or 'fp32'} + channels_last)"
    loops = {"plain fp32": plain, project: fast}
    if args.compile:
        loops[project + " + train.compile"] = _setup(args, "auto", True, device, compile=True)[0]
    times = {name: 0.0 for name in loops}
    first_step_s = {}
    for name, step in loops.items():  # warm-up (allocator, oneDNN kernel selection; compilation)
        for i in range(args.warmup):
            start = time.perf_counter()
            step()
            if i == 0:  # with train.compile: the forward and backward graphs are compiled here
                first_step_s[name] = time.perf_counter() - start
    for _ in range(args.rounds):
        for name, step in loops.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name] += time.perf_counter() - start
    images = args.rounds * args.steps * args.batch
    ips = {name: images / t for name, t in times.items()}
    base, fast = list(ips.values())[:2]
    return {"benchmark": "train_speed", **header(), "args": vars(args), "images_per_s": ips, "speedup": fast / base,
            "speedup_by_loop": {name: v / base for name, v in ips.items()}, "first_step_s": first_step_s}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--descriptors", default="SG")
    p.add_argument("--no-cbam", action="store_true")
    p.add_argument("--steps", type=int, default=3, help="steps per round per loop")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true", help="also time the project loop with train.compile "
                                                          "(torch.compile, inductor); its first step includes compiling")
    p.add_argument("--out", default="runs/bench")
    args = p.parse_args(argv)
    res = run(args)
    lines = [f"Training speed ({args.backbone}{'' if args.no_cbam else '+CBAM'}+CGD, {args.size} px, batch {args.batch}); "
             f"{machine_line(res)}", "", "| loop | images/s | × plain fp32 | first step s (with compilation) |",
             "| --- | --- | --- | --- |"]
    lines += [f"| {k} | {v:.1f} | {res['speedup_by_loop'][k]:.2f} | {res['first_step_s'].get(k, 0):.1f} |"
              for k, v in res["images_per_s"].items()]
    lines += ["", f"speed-up: {res['speedup']:.2f}×", ""]
    print("\n".join(lines))
    write_results(args.out, "train_speed", res, "\n".join(lines))


if __name__ == "__main__":
    main()
