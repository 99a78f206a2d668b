"""CBAM / CGD / loss ablation on real bird photographs (CUB_mini), trained from scratch, over seeds.

Models (configs/cub_mini.yaml: ResNet-18 at 64 px, train species 1-50, test species 51-100),
each trained with the same epoch budget, data and optimiser, then evaluated leave-one-out on
the unseen test species:

  a   triplet loss alone: ResNet-18 + average pooling (S) → FC → L2, no classifier
  b   + CGD head: descriptors SG with the auxiliary classification loss
  c   + CBAM in every block + CGD head
  d   Proxy-Anchor instead of the triplet loss, CGD head, no CBAM
  e   Proxy-Anchor, CBAM + CGD head
  f   SE (CBAM's channel gate alone) in every block + CGD head
  g   BAM (Park et al. 2018) after stages 1-3 + CGD head
  a0, b0, c0   a, b, c as the project trained them before issue #10: no centring BN in the
               head (model.embedding_bn=false) and CBAM at the base lr (optim.attention_lr_mult=1)
  b_nc, c_nc   b, c without the centring BN only (model.embedding_bn=false; issue #20's reference)
  b_pre, c_pre b, c with the metric loss on the projections before the centring BN (model.metric_on=pre_bn)
  b_neck, c_neck  b, c with BNNeck as Luo et al. 2019 §3.6 build it: metric loss before the BN,
               classifier after it (model.metric_on=pre_bn, model.classifier_on=embedding)

For every model and seed: Recall@K and MAP@R (exact search), the norm of the mean test
embedding, leave-one-out Recall@1 through product-quantised indexes (PQ16 and PQ64: 32 and 8
dimensions per sub-quantizer at 512-d), the mean cosine of same- and different-class pairs,
the span (max - min within an image) of the spatial gates per stage (CBAM: 4, BAM: 3), the metric loss of the
first and last epoch, the untrained network's Recall@1, and the training time. The trained
model is the last epoch's (nothing is selected on the test species). Mean ± std over seeds.

    python -m benchmarks.bench_cub_mini                     # every model, seeds 0 1 2 (~3 h on 2 fp32 cores)
    python -m benchmarks.bench_cub_mini --models a,b --seeds 0 --epochs 1 --steps-per-epoch 2 \\
        --out /tmp/cub_smoke data.test_classes=[51,60]       # smoke test, a few minutes
    python -m benchmarks.bench_cub_mini --combine A/cub_mini_partial.json B/cub_mini.json --out C
                                                             # one table from runs made apart

Skips (exit 0) when the data set is absent. Writes cub_mini.json / cub_mini.md (and, with
matplotlib, the score distributions and attention of the CBAM model) to --out.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from retrieval.config import Config, load_config
from retrieval.engine import train

from .common import header, machine_line, write_results

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "cub_mini.yaml"

TRIPLET_ONLY = ["model.attention=none", "model.descriptors=S", "loss.cls_weight=0"]
PROXY_ANCHOR = ["loss.name=proxy_anchor", "loss.miner=none", "loss.args={margin: 0.1, alpha: 32}"]
BEFORE = ["model.embedding_bn=false", "optim.attention_lr_mult=1"]
PRE_BN = ["model.metric_on=pre_bn"]
BNNECK = [*PRE_BN, "model.classifier_on=embedding"]
# name → (description, overrides on top of the config)
MODELS: dict[str, tuple[str, list[str]]] = {
    "a": ("(a) triplet alone (S, no classifier)", TRIPLET_ONLY),
    "b": ("(b) CGD head (SG + classifier), no CBAM", ["model.attention=none"]),
    "c": ("(c) CBAM + CGD head", ["model.attention=cbam"]),
    "d": ("(d) Proxy-Anchor + CGD head, no CBAM", ["model.attention=none", *PROXY_ANCHOR]),
    "e": ("(e) Proxy-Anchor + CBAM + CGD head", ["model.attention=cbam", *PROXY_ANCHOR]),
    "f": ("(f) SE + CGD head", ["model.attention=se"]),
    "g": ("(g) BAM + CGD head", ["model.attention=bam"]),
    "a0": ("(a) before #10", [*TRIPLET_ONLY, *BEFORE]),
    "b0": ("(b) before #10", ["model.attention=none", *BEFORE]),
    "c0": ("(c) before #10", ["model.attention=cbam", *BEFORE]),
    "b_nc": ("(b) no centring BN", ["model.attention=none", "model.embedding_bn=false"]),
    "c_nc": ("(c) no centring BN", ["model.attention=cbam", "model.embedding_bn=false"]),
    "b_pre": ("(b) metric loss before the BN", ["model.attention=none", *PRE_BN]),
    "c_pre": ("(c) metric loss before the BN", ["model.attention=cbam", *PRE_BN]),
    "b_neck": ("(b) BNNeck", ["model.attention=none", *BNNECK]),
    "c_neck": ("(c) BNNeck", ["model.attention=cbam", *BNNECK]),
}
SHOWN = ["recall@1", "recall@8", "map@r", "mean_norm", "pq16_recall@1", "pq64_recall@1", "cos_same", "cos_diff",
         "untrained_recall@1", "metric_loss_first", "metric_loss_last", "span_stage3", "span_stage4", "train_s"]


def _embedder(model, cfg: Config):
    """How the trainer embeds: on the CPU with the config's precision and memory format, no loader workers."""
    from retrieval.embed import Embedder

    return Embedder(model, "cpu", cfg.train.precision, cfg.train.channels_last, cfg.eval.batch_size, 0,
                    flag="train.precision")


def _embed_test(model, cfg: Config, test) -> tuple[np.ndarray, np.ndarray]:
    return _embedder(model, cfg).embed_dataset(test, progress=False)


def attention_spans(model, test, count: int = 64) -> list[float]:
    """Mean over ``count`` test images of (max - min) of each stage's spatial gate (CBAM, BAM); [] without one."""
    if not model.gate_modules():
        return []
    picks = np.linspace(0, len(test) - 1, min(count, len(test))).astype(int)
    images = torch.stack([test[int(i)][0] for i in picks])
    model.eval()
    maps = model.attention_maps(images.to(memory_format=torch.contiguous_format))
    return [float((m.flatten(1).amax(1) - m.flatten(1).amin(1)).mean()) for m in maps]


def space_metrics(model, cfg: Config, test) -> dict[str, float]:
    """Embedding-space diagnostics of the test species (see the module docstring)."""
    from retrieval.embedding_space import describe

    x, y = _embed_test(model, cfg, test)
    out = describe(x, y, ("PQ16", "PQ64"))
    out.pop("exact_recall@1")  # the trainer's evaluation reports exact Recall@K
    for stage, span in enumerate(attention_spans(model, test), start=1):
        out[f"span_stage{stage}"] = span
    return out


def untrained_recall(cfg: Config, splits) -> float:
    """Recall@1 of the network of ``cfg`` with the seed's random weights (the floor training must beat)."""
    from retrieval.evaluate import evaluate_splits
    from retrieval.models import build_model
    from retrieval.seeding import seed_everything

    seed_everything(cfg.train.seed)  # the seed training starts from
    num_classes = splits["train"].num_classes if cfg.loss.cls_weight > 0 else 0
    model = build_model(cfg.model, num_classes=num_classes)
    return evaluate_splits(_embedder(model.eval(), cfg), {"test": splits["test"]}, cfg, progress=False)["recall@1"]


def run_model(key: str, seed: int, base: Path, overrides: list[str], out: Path) -> dict:
    """Untrained score, training and diagnostics of one model at one seed; returns its result entry."""
    from retrieval.data import build_splits

    name, extra = MODELS[key]
    cfg = load_config(base, [*overrides, *extra, f"train.seed={seed}", f"train.out_dir={out / 'runs' / f'{key}_s{seed}'}"])
    splits = build_splits(dataclasses.replace(cfg.data, cache=False))
    untrained = untrained_recall(cfg, splits)
    start = time.perf_counter()
    result = train(cfg, overwrite=True)
    wall = time.perf_counter() - start
    log = pd.read_csv(Path(result.run_dir) / "metrics.csv")
    keys = [f"recall@{k}" for k in cfg.eval.recall_k] + ["map@r", "r_precision"]
    entry = {"model": key, "name": name, "seed": seed, "overrides": extra, **{k: float(result.row[k]) for k in keys},
             **space_metrics(result.model, cfg, splits["test"]), "untrained_recall@1": untrained,
             "metric_loss_first": float(log["metric_loss"].iloc[0]), "metric_loss_last": float(log["metric_loss"].iloc[-1]),
             "train_s": float(log["epoch_time_s"].sum()), "wall_s": wall, "epochs": int(result.row["epoch"]),
             "run_dir": str(result.run_dir), "train_images": len(splits["train"]), "test_images": len(splits["test"]),
             "train_classes": splits["train"].num_classes, "test_classes": splits["test"].num_classes}
    print(f"   {key} seed {seed}: R@1 {100 * entry['recall@1']:.2f} (untrained {100 * untrained:.2f}), mean norm "
          f"{entry['mean_norm']:.3f}, PQ64 R@1 {100 * entry['pq64_recall@1']:.2f}, {entry['train_s']:.0f} s",
          flush=True)
    return entry


def _cell(values: list[float], percent: bool) -> str:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return "–"
    scale = 100 if percent else 1
    mean, std = scale * float(np.mean(values)), scale * float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    digits = 2 if percent else 3
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def table(entries: list[dict]) -> list[str]:
    """Markdown: one row per model, mean ± std over its seeds."""
    percent = {"recall@1", "recall@8", "map@r", "pq16_recall@1", "pq64_recall@1", "untrained_recall@1"}
    head = ["model", "seeds", *SHOWN]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for key in dict.fromkeys(e["model"] for e in entries):
        rows = [e for e in entries if e["model"] == key]
        cells = [rows[0]["name"], str(len(rows))]
        for column in SHOWN:
            if column == "train_s":
                cells.append(f"{np.mean([r['train_s'] for r in rows]):.0f}")
            else:
                cells.append(_cell([r.get(column) for r in rows], column in percent))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def pictures(entries: list[dict], cfg: Config, out: Path) -> list[str]:
    """Score distributions and attention of the first seed of c (and c0), Recall@K curves (needs matplotlib)."""
    made = []
    try:
        from retrieval.checkpoint import load_model
        from retrieval.data import build_splits
        from retrieval.viz import attention_figure
        from retrieval.viz.scores import score_figure

        test = build_splits(dataclasses.replace(cfg.data, cache=False))["test"]
        firsts = test.records.groupby("label", sort=True).head(1)["path"].tolist()
        for key in ("c", "g", "c0", "b", "b0"):
            chosen = [e for e in entries if e["model"] == key]
            if not chosen:
                continue
            model, model_cfg, _ = load_model(Path(chosen[0]["run_dir"]) / "last.pt")
            x, y = _embed_test(model, model_cfg, test)
            png = out / f"cub_mini_scores_{key}.png"
            score_figure(x, y, png, title=f"{chosen[0]['name']}, seed {chosen[0]['seed']}: CUB_mini test species")
            made.append(str(png))
            if model.gate_modules():
                png = out / f"cub_mini_attention_{key}.png"
                attention_figure(model, firsts[:: max(1, len(firsts) // 4)][:4], model_cfg, png)
                made.append(str(png))
    except ImportError as err:
        print(f"(pictures skipped: {err})")
    return made


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="base config (default configs/cub_mini.yaml)")
    p.add_argument("--root", help="CUB_mini folder (default: the config's data.root)")
    p.add_argument("--epochs", type=int, help="epoch budget per model (default: the config's train.epochs)")
    p.add_argument("--steps-per-epoch", type=int, help="cap steps per epoch (quick runs; default: a full pass)")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds per model (default 0 1 2)")
    p.add_argument("--out", default="runs/bench/cub_mini", help="results folder (run folders under runs/)")
    p.add_argument("--combine", nargs="+", metavar="JSON",
                   help="train nothing: write one table (cub_mini.json/.md in --out) from these results files")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides for every model")
    return p.parse_args(argv)


def combine(paths: list[str], out: Path, command: str) -> int:
    """One table from the entries of several results files (runs made apart; same budget assumed and checked)."""
    import json

    entries = []
    for path in paths:
        try:
            result = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            print(f"error: --combine: {path}: {err}", file=sys.stderr)
            return 2
        entries += result.get("models", [])
    seen = {(e["model"], e["seed"]) for e in entries}
    if len(seen) != len(entries):
        print("error: --combine: a model and seed appear twice among the files", file=sys.stderr)
        return 2
    epochs = {(e["epochs"], e["train_images"], e["test_images"]) for e in entries}
    if len(epochs) > 1:
        print(f"error: --combine: the files differ in (epochs, train images, test images): {sorted(epochs)}",
              file=sys.stderr)
        return 2
    order = list(MODELS)
    entries.sort(key=lambda e: (order.index(e["model"]) if e["model"] in order else len(order), e["seed"]))
    lines = [f"CUB_mini, combined from {len(paths)} results files: {', '.join(paths)}",
             f"combined on {machine_line(header())} (each run's machine: its file's header, if written)", "",
             *table(entries), "", "Mean ± std over seeds (ddof 1).", f"command: {command}", ""]
    print("\n".join(lines))
    write_results(out, "cub_mini", {"benchmark": "cub_mini", "combined_from": paths, "models": entries},
                  "\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.combine:
        return combine(args.combine, Path(args.out),
                       "python -m benchmarks.bench_cub_mini " + " ".join(argv if argv is not None else sys.argv[1:]))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    overrides = list(args.overrides)
    overrides += [f"data.root={args.root}"] if args.root else []
    overrides += [f"train.epochs={args.epochs}"] if args.epochs is not None else []
    overrides += [f"train.steps_per_epoch={args.steps_per_epoch}"] if args.steps_per_epoch is not None else []
    base = load_config(args.config, overrides)
    if not (Path(base.data.root) / "images.txt").is_file():
        print(f"skipped: CUB_mini not found at {base.data.root} (no images.txt); see ../shared/data/README.md")
        return 0
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        print(f"error: --models: {unknown or models} not among {', '.join(MODELS)}", file=sys.stderr)
        return 2
    out, start = Path(args.out), time.perf_counter()
    entries = []
    for seed in args.seeds:  # seed-major: a stopped run still has every model at the first seeds
        for key in models:
            entries.append(run_model(key, seed, Path(args.config), overrides, out))
            write_results(out, "cub_mini_partial", {"models": entries}, "")
    head = header()
    e0 = entries[0]
    steps = f", at most {base.train.steps_per_epoch} steps per epoch" if base.train.steps_per_epoch else ""
    budget = (f"{base.train.epochs} epochs per model{steps}; batch {base.data.batch_size} "
              f"({base.data.batch_size // base.data.m_per_class} species × {base.data.m_per_class}), "
              f"{base.data.image_size} px, precision {base.train.precision}, seeds {' '.join(map(str, args.seeds))}")
    start_from = ("from scratch" if base.model.pretrained == "none"
                  else f"fine-tuned from {base.model.backbone} weights '{base.model.pretrained}'")
    lines = [f"CUB_mini ablation, {start_from}: train {e0['train_classes']} species ({e0['train_images']} images), "
             f"test {e0['test_classes']} unseen species ({e0['test_images']} images, leave-one-out)",
             machine_line(head), f"budget: {budget}; took {(time.perf_counter() - start) / 60:.1f} min in all", "",
             *table(entries), "",
             "Mean ± std over seeds. Trained = the last epoch's model (no selection on the test species). "
             "Percentages: Recall@K, MAP@R, PQ Recall@1; span_stageN: max - min of CBAM's spatial map within an "
             "image, averaged over 64 test images.",
             f"command: python -m benchmarks.bench_cub_mini {' '.join(argv if argv is not None else sys.argv[1:])}", ""]
    print("\n".join(lines))
    result = {"benchmark": "cub_mini", **head, "budget": budget, "config": str(args.config), "overrides": overrides,
              "models": entries}
    result["pictures"] = pictures(entries, base, out)
    write_results(out, "cub_mini", result, "\n".join(lines))
    print(f"wrote {out / 'cub_mini.json'}, {out / 'cub_mini.md'}" + "".join(f", {p}" for p in result["pictures"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
