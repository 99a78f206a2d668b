"""Wall time of ``query.py`` for one image → top-K, per runtime, as a user runs it (a new process each time).

Rows, each a fresh ``python query.py ... IMAGE`` process timed from launch to exit:

- ``--runtime torch``: loads the checkpoint with torch (the default);
- ``--runtime onnxruntime``, first use: an empty cache, so the call exports the network to ONNX
  and keeps it (``retrieval.onnx_cache``);
- ``--runtime onnxruntime``, cached: what every later call does — no torch import, no export.

The torch and cached rows alternate in rounds so machine noise hits both alike; the ratio is
taken per round. The ranked ids of both are compared (same top-K, or the first rank that differs).
The goal (issue #23): one CUB_mini image → top-10 in ≤ 2 s wall from a warm disk cache::

    python build_index.py --checkpoint CKPT --out runs/idx_cub --dataset-config configs/cub_mini.yaml --split test
    python -m benchmarks.bench_query --checkpoint CKPT --index runs/idx_cub --out runs/bench/query
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import header, machine_line, write_results

ROOT = Path(__file__).resolve().parents[1]


def run_query(checkpoint: str, index: str, image: str, k: int, runtime: str, env: dict) -> tuple[float, list[int]]:
    """(wall seconds, ranked gallery ids) of one ``query.py`` process."""
    cmd = [sys.executable, str(ROOT / "query.py"), "--checkpoint", checkpoint, "--index", index, "-k", str(k),
           "--runtime", runtime, "--format", "json", "--quiet", image]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    spent = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"query.py failed ({runtime}): {proc.stderr.strip().splitlines()[-1]}")
    return spent, [hit["gallery_id"] for hit in json.loads(proc.stdout)[0]["results"]]


def first_image(index: str) -> str:
    """The index's first gallery image (it is also a query a user could send)."""
    import pandas as pd

    folder = Path(index)
    table = (pd.read_parquet(folder / "metadata.parquet") if (folder / "metadata.parquet").exists()
             else pd.read_csv(folder / "metadata.csv"))
    return str(table["path"].iloc[0])


def measure(args: argparse.Namespace) -> dict:
    image = args.image or first_image(args.index)
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "RETRIEVAL_CACHE_DIR": cache}
        first, _ = run_query(args.checkpoint, args.index, image, args.k, "onnxruntime", env)  # exports
        run_query(args.checkpoint, args.index, image, args.k, "torch", env)  # warms the disk cache
        rows: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
        ids: dict[str, list[int]] = {}
        for _ in range(args.rounds):
            for runtime in rows:
                spent, ids[runtime] = run_query(args.checkpoint, args.index, image, args.k, runtime, env)
                rows[runtime].append(spent)
    ratios = [t / o for t, o in zip(rows["torch"], rows["onnxruntime"])]
    same = next((r for r, (a, b) in enumerate(zip(ids["torch"], ids["onnxruntime"])) if a != b), None)
    return {"image": image, "k": args.k, "rounds": args.rounds, "first_onnxruntime_s": first,
            "torch_s": rows["torch"], "onnxruntime_cached_s": rows["onnxruntime"],
            "median_torch_s": statistics.median(rows["torch"]),
            "median_onnxruntime_cached_s": statistics.median(rows["onnxruntime"]),
            "torch_over_cached": ratios, "first_differing_rank": same}


def markdown(head: dict, res: dict, command: str) -> str:
    differ = ("same top-{k}".format(k=res["k"]) if res["first_differing_rank"] is None
              else f"ranks differ from rank {res['first_differing_rank'] + 1} (bf16 vs fp32 ties)")
    return "\n".join([
        f"`query.py`, one image → top-{res['k']}, wall seconds per process ({res['rounds']} alternating rounds)",
        machine_line(head), "",
        "| runtime | median s | runs s |", "| --- | --- | --- |",
        f"| `--runtime torch` | {res['median_torch_s']:.2f} | {', '.join(f'{t:.2f}' for t in res['torch_s'])} |",
        f"| `--runtime onnxruntime`, first use (exports, caches) | {res['first_onnxruntime_s']:.2f} | |",
        f"| `--runtime onnxruntime`, cached | {res['median_onnxruntime_cached_s']:.2f} | "
        f"{', '.join(f'{t:.2f}' for t in res['onnxruntime_cached_s'])} |", "",
        f"torch / cached per round: {', '.join(f'{r:.2f}×' for r in res['torch_over_cached'])}; {differ}.",
        f"image: {res['image']}", f"command: {command}", ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--index", required=True, help="index folder built with the checkpoint")
    parser.add_argument("--image", help="query image (default: the index's first gallery image)")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="runs/bench/query")
    args = parser.parse_args(argv)
    head = header()
    res = measure(args)
    command = "python -m benchmarks.bench_query " + " ".join(sys.argv[1:] if argv is None else argv)
    text = markdown(head, res, command)
    write_results(args.out, "query", {**head, **res, "command": command}, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
