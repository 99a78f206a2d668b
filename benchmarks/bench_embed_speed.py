"""Embedding images/s of the project's extraction vs a plain fp32 eval loop, side by side.

Project path: ``retrieval.embed.Embedder.embed_loader`` (inference mode, bf16 autocast where the CPU
has native bf16 / AMP on CUDA, channels_last, float32 L2-normalised output). Plain loop:
``torch.no_grad()``, contiguous tensors, fp32. Same weights (one is a copy of the other),
same in-memory batches (random tensors, so decoding is not measured); the two loops
alternate in rounds after a warm-up so machine noise hits both alike. The embeddings of the
two paths are compared (minimum cosine) so the speed-up is not bought with wrong output.
Target (issue 5): at least 2.5× (2.5× was measured on this machine for torchvision's
ResNet-50 at 224 px with bf16 + channels_last; ``--plain-torchvision`` times that reference
too). Full size, about 1.5 minutes on 2 cores (2.5 with ``--plain-torchvision``)::

    python -m benchmarks.bench_embed_speed --plain-torchvision
    python -m benchmarks.bench_embed_speed --compile --onnxruntime   # + torch.compile and ONNX Runtime rows
    python -m benchmarks.bench_embed_speed --onnxruntime --int8       # + ONNX Runtime int8 (retrieval.quantize)

The first (untimed) pass of each loop is reported apart ("first pass s"): for torch.compile it
includes the compilation, for ONNX Runtime the export.

Smoke size::

    python -m benchmarks.bench_embed_speed --backbone resnet18 --size 64 --batch 8 --steps 1 --rounds 1
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F

from retrieval.config import ModelConfig
from retrieval.embed import Embedder
from retrieval.models import build_model
from retrieval.runtime import resolve_device

from .common import header, machine_line, write_results


def plain_embed(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]],
                device: torch.device) -> torch.Tensor:
    """The baseline: fp32 eval loop under ``torch.no_grad()`` → (N, D) L2-normalised, on the CPU."""
    model.eval()
    out = []
    with torch.no_grad():
        for images, _ in batches:
            out.append(F.normalize(model(images.to(device)).float(), dim=1).cpu())
    return torch.cat(out)


def _loops(model: torch.nn.Module, batches, device: torch.device, args) -> tuple[dict, torch.dtype | None]:
    """({name: () -> (N, D) embeddings}: the plain fp32 loop first, then the project's extraction (and with
    --compile / --onnxruntime its other runtimes), same weights; the project path's autocast dtype)."""
    plain = copy.deepcopy(model).to(device).eval()
    # The Embedder places its copy once (device, channels_last), as a gallery job does.
    fast = Embedder(copy.deepcopy(model), device, args.precision, channels_last=True)
    loops = {"plain fp32 eval loop": lambda: plain_embed(plain, batches, device),
             f"Embedder ({fast.dtype or 'fp32'} + channels_last)": fast}
    if args.compile:
        loops[f"Embedder ({fast.dtype or 'fp32'} + channels_last) + torch.compile"] = Embedder(
            copy.deepcopy(model), device, args.precision, channels_last=True, compile="inductor")
    if args.onnxruntime:
        loops["Embedder, ONNX Runtime (fp32)"] = Embedder(copy.deepcopy(model), device, "fp32", runtime="onnxruntime")
    if args.int8:  # calibrated on the benchmark's own images, as a gallery job calibrates on its gallery
        int8 = Embedder(copy.deepcopy(model), device, "fp32", runtime="onnxruntime-int8")
        int8.calibrate_on(torch.utils.data.TensorDataset(*batches[0]))
        loops["Embedder, ONNX Runtime int8"] = int8
    for name, loop in loops.items():
        if isinstance(loop, Embedder):
            loops[name] = (lambda e: lambda: torch.from_numpy(e.embed_loader(batches, progress=False)[0]))(loop)
    return loops, fast.dtype


def compare(model: torch.nn.Module, batches, device: torch.device, args) -> dict:
    """Images/s of both loops over ``batches`` in alternating rounds, their ratio and output agreement."""
    loops, dtype = _loops(model, batches, device, args)
    outputs, first = {}, {}
    for name, fn in loops.items():  # warm-up (oneDNN kernel selection, allocator; compilation, export)
        start = time.perf_counter()
        outputs[name] = fn()
        first[name] = time.perf_counter() - start
    for _ in range(args.warmup - 1):
        for fn in loops.values():
            fn()
    times = {name: 0.0 for name in loops}
    for _ in range(args.rounds):
        for name, fn in loops.items():
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name] += time.perf_counter() - start
    images = args.rounds * sum(len(x) for x, _ in batches)
    ips = {name: images / t for name, t in times.items()}
    base = next(iter(outputs.values()))
    plain_ips = next(iter(ips.values()))
    return {"images_per_s": ips, "speedup": list(ips.values())[1] / plain_ips, "autocast": str(dtype),
            "min_cosine": float((base * list(outputs.values())[1]).sum(1).min()),
            "speedups": {name: v / plain_ips for name, v in ips.items()}, "first_pass_s": first,
            "min_cosines": {name: float((base * out).sum(1).min()) for name, out in outputs.items()}}


def run(args) -> dict:
    device = resolve_device(args.device)
    torch.manual_seed(0)
    batches = [(torch.randn(args.batch, 3, args.size, args.size), torch.zeros(args.batch, dtype=torch.int64))
               for _ in range(args.steps)]
    cfg = ModelConfig(backbone=args.backbone, pretrained="none", embedding_dim=args.dim,
                      descriptors=args.descriptors, attention="none" if args.no_cbam else "cbam")
    models = {f"project {args.backbone}{'' if args.no_cbam else '+CBAM'}+CGD {args.descriptors} "
              f"({args.dim}-d)": build_model(cfg, num_classes=0, load_weights=False)}
    if args.plain_torchvision:
        import torchvision

        models[f"torchvision {args.backbone} (1000 logits)"] = getattr(torchvision.models, args.backbone)(weights=None)
    results = {name: compare(model, batches, device, args) for name, model in models.items()}
    return {"benchmark": "embed_speed", **header(), "args": vars(args), "device": str(device),
            "autocast": next(iter(results.values()))["autocast"], "models": results,
            "speedup": next(iter(results.values()))["speedup"], "target_speedup": 2.5}


def markdown(res: dict) -> str:
    a = res["args"]
    lines = [f"Embedding speed ({a['size']} px, batch {a['batch']}, {a['rounds']} rounds × {a['steps']} batches, "
             f"in-memory tensors); {machine_line(res)}", "",
             "| model | loop | images/s | speed-up | min cosine to fp32 | first pass s |",
             "| --- | --- | --- | --- | --- | --- |"]
    for model, r in res["models"].items():
        for i, (name, ips) in enumerate(r["images_per_s"].items()):
            cosine = f"{r['min_cosines'][name]:.4f}" if i else ""
            lines.append(f"| {model} | {name} | {ips:.1f} | {r['speedups'][name]:.2f}× | {cosine} | "
                         f"{r['first_pass_s'][name]:.1f} |")
    lines += ["", f"Project model speed-up {res['speedup']:.2f}× (target ≥ {res['target_speedup']}×).", ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dim", type=int, default=1536, help="embedding size (CGD: 1536)")
    p.add_argument("--descriptors", default="SG")
    p.add_argument("--no-cbam", action="store_true")
    p.add_argument("--int8", action="store_true",
                   help="also time --runtime onnxruntime-int8 (calibrated on the first batch; the first pass "
                        "includes the export and the quantisation)")
    p.add_argument("--plain-torchvision", action="store_true", help="also time torchvision's network (the reference)")
    p.add_argument("--compile", action="store_true", help="also time the Embedder with torch.compile (inductor)")
    p.add_argument("--onnxruntime", action="store_true", help="also time the Embedder with --runtime onnxruntime")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="the project path's precision (auto: bf16 on CPUs with native bf16, AMP on CUDA)")
    p.add_argument("--steps", type=int, default=2, help="batches per round (distinct tensors)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2, help="untimed passes over the batches per loop (>= 1)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/bench")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.warmup < 1:
        raise SystemExit("--warmup: expected >= 1 (the first pass also checks the outputs agree)")
    res = run(args)
    text = markdown(res)
    print(text)
    write_results(args.out, "embed_speed", res, text)
    return res


if __name__ == "__main__":
    main()
