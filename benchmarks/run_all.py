"""Run the speed benchmarks in sequence, each in its own process, and collect their tables.

Training speed, embedding speed, Recall@K metric speed, index search (1M × 512) and one
image → top-10 end to end, at sizes chosen to fit about 20 minutes on 2 CPU cores (the index
benchmark is about half of it). Each writes ``<name>.json`` and ``<name>.md`` (the metrics
benchmark: ``metrics.json``) under ``--out``; ``summary.md`` gathers the tables and how long
each run took. A failing benchmark is reported and the others still run (exit status 1).
``make bench`` runs::

    python -m benchmarks.run_all                # full sizes, about 20 minutes on 2 cores
    python -m benchmarks.run_all --quick        # tiny sizes, under a minute (checks it all runs)
    python -m benchmarks.run_all --only index,e2e
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from .common import header, machine_line, write_results

ROOT = Path(__file__).resolve().parents[1]

# name → (module, arguments at full size, arguments at --quick size)
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "train_speed": ("bench_train_speed", [],
                    ["--backbone", "resnet18", "--size", "32", "--batch", "8", "--dim", "32", "--steps", "1",
                     "--rounds", "1", "--warmup", "1"]),
    "embed_speed": ("bench_embed_speed", ["--plain-torchvision"],
                    ["--backbone", "resnet18", "--size", "32", "--batch", "4", "--dim", "32", "--steps", "1",
                     "--rounds", "1"]),
    "metrics": ("bench_metrics", [], ["--n", "3000", "--classes", "600", "--ks", "1,10"]),
    "index": ("bench_index", [],
              ["--n", "5000", "--queries", "50", "--clusters", "100", "--superclusters", "10", "--ivf", "IVF16,Flat",
               "--nprobe", "1,4", "--ef-search", "16", "--single", "3", "--batch-budget", "0"]),
    "e2e": ("bench_e2e", [], ["--backbone", "resnet18", "--size", "32", "--dim", "32", "--gallery", "1000",
                              "--image-size", "64x48", "--repeats", "2", "--warmup", "1"]),
    "serve": ("bench_serve", [], ["--backbone", "resnet18", "--size", "32", "--dim", "32", "--gallery", "40",
                                  "--requests", "8", "--adds", "4"]),
}


def _out_args(name: str, out: Path) -> list[str]:
    # bench_metrics takes a file path, the others a folder
    return ["--out", str(out / "metrics.json")] if name == "metrics" else ["--out", str(out)]


def run_one(name: str, out: Path, quick: bool) -> dict:
    """Run one benchmark as ``python -m benchmarks.<module>``; its output goes straight to the terminal."""
    module, full, small = BENCHMARKS[name]
    cmd = [sys.executable, "-m", f"benchmarks.{module}", *(small if quick else full), *_out_args(name, out)]
    print(f"\n## {name}: {' '.join(cmd[1:])}\n", flush=True)
    start = time.perf_counter()
    code = subprocess.run(cmd, cwd=ROOT).returncode
    return {"name": name, "command": " ".join(["python", *cmd[1:]]), "returncode": code,
            "seconds": time.perf_counter() - start}


def summary(head: dict, runs: list[dict], out: Path) -> str:
    lines = [f"# Speed benchmarks; {machine_line(head)}", "", "| benchmark | seconds | status | command |",
             "| --- | --- | --- | --- |"]
    lines += [f"| {r['name']} | {r['seconds']:.0f} | {'ok' if r['returncode'] == 0 else 'FAILED'} | "
              f"`{r['command']}` |" for r in runs]
    for r in runs:
        md = out / f"{r['name']}.md"
        if r["returncode"] == 0 and md.is_file():
            lines += ["", f"## {r['name']}", "", md.read_text().strip()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench", help="folder for the JSON and Markdown results")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs, numbers mean nothing")
    p.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"--only: unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    out = Path(args.out).resolve()
    head = header()
    runs = [run_one(name, out, args.quick) for name in names]
    text = summary(head, runs, out)
    write_results(out, "summary", {**head, "quick": args.quick, "runs": runs}, text)
    failed = [r["name"] for r in runs if r["returncode"] != 0]
    print(f"\nwrote {out}/summary.md" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
