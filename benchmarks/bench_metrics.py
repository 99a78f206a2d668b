"""Speed and memory of retrieval_metrics at SOP scale (60,502 × 512, leave-one-out).

Compares Recall@{1,10,100,1000} + MAP@R + R-precision (retrieval.metrics.retrieval_metrics)
with one bare ``IndexFlatIP`` search of the same K on the same data (the floor: any exact
method must do this search), and with pytorch-metric-learning's AccuracyCalculator
(precision_at_1, MAP@R, R-precision at k="max_bin_count"; it has no Recall@K for K > 1).
Target (issue 5): within 1.25× the bare search time, peak extra memory under 2 GB.

Peak extra memory = process peak RSS during the step minus RSS before it (Linux: the peak
is reset through /proc/self/clear_refs). With ``--repeat N`` the bare search and
retrieval_metrics alternate N times and the fastest run of each counts (on a shared machine
the load changes between runs). Run: ``python -m benchmarks.bench_metrics``.
"""
from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import faiss
import numpy as np

from retrieval.files import atomic_write_text
from retrieval.metrics import retrieval_metrics
from retrieval.provenance import versions


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def measure(fn):
    """Run fn(); return (result, seconds, peak extra MB over the RSS before the call)."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM (the peak RSS) to the current RSS
    except OSError:
        pass
    before = _rss_kb("VmRSS")
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    return result, seconds, (_rss_kb("VmHWM") - before) / 1024


def sop_like(n: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random unit vectors; labels in ``classes`` classes of 5-6 items (SOP test: 60,502 / 11,316)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = rng.permutation(np.arange(n) % classes).astype(np.int64)
    return x, y


def bare_search(x: np.ndarray, k: int):
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index.search(x, k)


def accuracy_calculator(x: np.ndarray, y: np.ndarray) -> dict:
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r", "r_precision"),
                              k="max_bin_count", device=torch.device("cpu"))
    return calc.get_accuracy(torch.from_numpy(x), torch.from_numpy(y))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60_502)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=11_316)
    parser.add_argument("--ks", default="1,10,100,1000")
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=1, help="alternate bare/ours N times, keep the fastest")
    parser.add_argument("--no-pml", action="store_true", help="skip AccuracyCalculator")
    parser.add_argument("--out", default="runs/bench/bench_metrics.json")
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    x, y = sop_like(args.n, args.dim, args.classes, seed=0)

    rows = {"bare IndexFlatIP search": {"seconds": float("inf"), "peak_extra_mb": 0.0},
            "retrieval_metrics": {"seconds": float("inf"), "peak_extra_mb": 0.0}}
    runs = {"bare IndexFlatIP search": [], "retrieval_metrics": []}
    for _ in range(args.repeat):
        for name, fn in (("bare IndexFlatIP search", lambda: bare_search(x, max(ks))),
                         ("retrieval_metrics", lambda: retrieval_metrics(x, y, ks=ks, chunk_size=args.chunk_size))):
            result, t, mem = measure(fn)
            runs[name].append(t)
            row = rows[name]
            row.update(seconds=min(row["seconds"], t), peak_extra_mb=max(row["peak_extra_mb"], mem), runs=runs[name])
            if name == "retrieval_metrics":
                ours = row["metrics"] = result
    if not args.no_pml:
        ref, t, mem = measure(lambda: accuracy_calculator(x, y))
        rows["AccuracyCalculator"] = {"seconds": t, "peak_extra_mb": mem, "metrics": ref}

    ratio = rows["retrieval_metrics"]["seconds"] / rows["bare IndexFlatIP search"]["seconds"]
    print(f"{args.n:,} × {args.dim} unit vectors, {args.classes:,} classes, K = {ks}, "
          f"{faiss.omp_get_max_threads()} threads")
    print(f"{'':26s} {'seconds':>9s} {'peak extra MB':>14s}")
    for name, row in rows.items():
        print(f"{name:26s} {row['seconds']:9.2f} {row['peak_extra_mb']:14.0f}")
    print(f"retrieval_metrics / bare search = {ratio:.2f} (target <= 1.25); metrics: "
          + ", ".join(f"{k}={v:.4f}" for k, v in ours.items()))
    result = {"n": args.n, "dim": args.dim, "classes": args.classes, "ks": ks, "chunk_size": args.chunk_size,
              "threads": faiss.omp_get_max_threads(), "ratio_to_bare_search": ratio, "rows": rows,
              "versions": versions()}
    atomic_write_text(Path(args.out), json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
