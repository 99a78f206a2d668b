"""Which attention helps retrieval, and which looks at the object: none / SE / CBAM / BAM on generated data.

Each attention choice (``model.attention``) is trained with the demo's recipe (configs/demo.yaml:
ResNet-18 + CGD "SG", triplet + classifier, 64 px, from scratch) on the generated shapes,
whose object masks the generator writes, then scored on the 60 unseen test classes:
Recall@1/8 and MAP@R (leave-one-out, the last epoch's model), the localisation score
(pointing game and energy inside the object mask; retrieval/localisation_eval.py) of Grad-CAM
of the embedding and of each attention gate beside a centre prior, and the training time per
epoch. Mean ± std over seeds, and every seed's row.

    python -m benchmarks.bench_attention                           # none, se, cbam, bam × seeds 0 1 2
    python -m benchmarks.bench_attention --attention none,cbam --seeds 0 --epochs 1 --out /tmp/att   # smoke

CUB_mini's birds (real photographs, no usable boxes) are compared by
``python -m benchmarks.bench_cub_mini --models b,f,c,g`` (CGD without attention, SE, CBAM, BAM).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from retrieval.config import load_config
from retrieval.engine import train

from .bench_cub_mini import _cell
from .common import header, machine_line, write_results

ROOT = Path(__file__).resolve().parents[1]
CHOICES = ("none", "se", "cbam", "bam")
LOCALISATION_IMAGES = 240
METRICS = ["recall@1", "recall@8", "map@r"]


def _localisation(model, cfg) -> dict[str, float]:
    """Pointing game / energy of Grad-CAM, the last gate (if any) and the centre prior, on the test split."""
    from retrieval.data import build_splits
    from retrieval.localisation_eval import CENTRE_PRIOR, GRAD_CAM, score_localisation

    test = build_splits(dataclasses.replace(cfg.data, cache=False))["test"]
    scores = score_localisation(model.eval(), test, cfg.data.image_size, cfg.eval.batch_size, LOCALISATION_IMAGES)
    gates = [name for name in scores if name not in (GRAD_CAM, CENTRE_PRIOR)]
    out = {"gradcam_pointing": scores[GRAD_CAM]["pointing_game"], "gradcam_energy": scores[GRAD_CAM]["energy"],
           "centre_pointing": scores[CENTRE_PRIOR]["pointing_game"], "centre_energy": scores[CENTRE_PRIOR]["energy"]}
    if gates:  # the deepest gate: the one the service's "gates" overlay shows
        out.update(gate_pointing=scores[gates[-1]]["pointing_game"], gate_energy=scores[gates[-1]]["energy"])
    return out


def run_one(attention: str, seed: int, out: Path, overrides: list[str]) -> dict:
    """Train one attention choice at one seed; its metrics, localisation and epoch time."""
    cfg = load_config(ROOT / "configs" / "demo.yaml",
                      [f"data.root={out / 'data'}", *overrides, f"model.attention={attention}",
                       f"train.seed={seed}", f"train.out_dir={out / 'runs' / f'{attention}_s{seed}'}"])
    start = time.perf_counter()
    result = train(cfg, overwrite=True)
    log = pd.read_csv(Path(result.run_dir) / "metrics.csv")
    entry = {"attention": attention, "seed": seed, **{k: float(result.row[k]) for k in METRICS},
             **_localisation(result.model, cfg), "epoch_s": float(log["epoch_time_s"].mean()),
             "wall_s": time.perf_counter() - start, "epochs": int(result.row["epoch"])}
    print(f"   {attention} seed {seed}: R@1 {100 * entry['recall@1']:.2f}, MAP@R {100 * entry['map@r']:.2f}, "
          f"Grad-CAM pointing {entry['gradcam_pointing']:.3f} / energy {entry['gradcam_energy']:.3f}, "
          f"{entry['epoch_s']:.1f} s/epoch", flush=True)
    return entry


COLUMNS = [("recall@1", True), ("recall@8", True), ("map@r", True), ("gradcam_pointing", False),
           ("gradcam_energy", False), ("gate_pointing", False), ("gate_energy", False), ("centre_pointing", False),
           ("centre_energy", False), ("epoch_s", False)]


def table(entries: list[dict]) -> list[str]:
    """Markdown: mean ± std over seeds per attention choice, then every seed's row."""
    head = ["attention", "seeds", *(c for c, _ in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for attention in dict.fromkeys(e["attention"] for e in entries):
        rows = [e for e in entries if e["attention"] == attention]
        cells = [attention, str(len(rows))] + [_cell([r.get(c) for r in rows], pct) for c, pct in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| attention | seed | " + " | ".join(c for c, _ in COLUMNS) + " |", "|" + " --- |" * (len(COLUMNS) + 2)]
    for e in entries:
        cells = [f"{100 * e[c]:.2f}" if pct else (f"{e[c]:.3f}" if c in e else "–") for c, pct in COLUMNS]
        lines.append(f"| {e['attention']} | {e['seed']} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--attention", default=",".join(CHOICES), help=f"comma-separated, of {', '.join(CHOICES)}")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, help="epoch budget (default: the demo config's)")
    p.add_argument("--out", default="runs/bench/attention_synthetic")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    choices = [a.strip() for a in args.attention.split(",") if a.strip()]
    if not choices or any(a not in CHOICES for a in choices):
        print(f"error: --attention: {args.attention!r}: expected names from {', '.join(CHOICES)}", file=sys.stderr)
        return 2
    overrides = [*args.overrides, *([f"train.epochs={args.epochs}"] if args.epochs else [])]
    out, start, entries = Path(args.out), time.perf_counter(), []
    for seed in args.seeds:  # seed-major: a stopped run has every choice at the first seeds
        for attention in choices:
            entries.append(run_one(attention, seed, out, overrides))
            write_results(out, "attention_partial", {"runs": entries}, "")
    head = header()
    lines = [f"none / SE / CBAM / BAM on generated data (configs/demo.yaml, 60 unseen test classes; localisation on "
             f"{LOCALISATION_IMAGES} test images against the generator's object masks)", machine_line(head),
             f"took {(time.perf_counter() - start) / 60:.1f} min in all", "", *table(entries), "",
             "Recall@K and MAP@R in %, leave-one-out, last epoch. Pointing game: share of images whose map maximum "
             "is on the object (15 px at 224 px, scaled); energy: share of the positive map mass inside the object. "
             "gate_*: the deepest attention gate (CBAM stage 4, BAM after stage 3), a gate on a residual term.",
             f"command: python -m benchmarks.bench_attention {' '.join(argv if argv is not None else sys.argv[1:])}", ""]
    print("\n".join(lines))
    write_results(out, "attention", {"benchmark": "attention", **head, "overrides": overrides, "runs": entries},
                  "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
