"""CBAM / CGD ablation on real bird photographs (CUB_mini), trained from scratch on this machine.

Three models, each trained with the same epoch budget, seed, data and optimiser
(configs/cub_mini.yaml: ResNet-18 at 128 px, train species 1-50, test species 51-100), then
evaluated leave-one-out on the unseen test species:

  (a) ResNet-18 + average pooling (descriptor S = SPoC, then FC + L2), triplet loss only
  (b) + CGD head: descriptors SG with the auxiliary classification loss
  (c) + CBAM in every block + CGD head

Beside each, the same network untrained (random weights), so the table shows what training
added. The trained numbers are the last epoch's (no checkpoint picked on the test split).
Equal epochs mean equal images seen; CBAM costs time per step, so training time is reported.

    python -m benchmarks.bench_cub_mini        # configs/cub_mini.yaml: 15 epochs per model, ~12 min on 2 idle cores
    python -m benchmarks.bench_cub_mini --epochs 1 --steps-per-epoch 2 --out /tmp/cub_smoke \
        data.test_classes=[51,60] data.image_size=64 data.resize=72   # smoke test, ~1 min

Skips (exit 0) when the data set is absent. Writes cub_mini.json / cub_mini.md (and, with
matplotlib, the Recall@K curves and the attention picture of (c)) to --out.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from retrieval.config import Config, load_config
from retrieval.engine import train

from .common import header, machine_line, write_results

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "cub_mini.yaml"

# name → (description, overrides on top of the config)
MODELS: dict[str, tuple[str, list[str]]] = {
    "a": ("(a) ResNet-18 + avg pooling (S), triplet", ["model.cbam=false", "model.descriptors=S", "loss.cls_weight=0"]),
    "b": ("(b) + CGD head (SG + classifier)", ["model.cbam=false", "model.descriptors=SG", "loss.cls_weight=1.0"]),
    "c": ("(c) + CBAM + CGD head", ["model.cbam=true", "model.descriptors=SG", "loss.cls_weight=1.0"]),
}


def untrained_metrics(cfg: Config, splits) -> dict[str, float]:
    """The network of ``cfg`` with the seed's random weights, scored on the test split."""
    from retrieval.evaluate import evaluate_splits
    from retrieval.models import build_model
    from retrieval.seeding import seed_everything

    seed_everything(cfg.train.seed)  # the seed training starts from
    num_classes = splits["train"].num_classes if cfg.loss.cls_weight > 0 else 0
    model = build_model(cfg.model, num_classes=num_classes)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    return evaluate_splits(model.to(memory_format=memory_format).eval(), {"test": splits["test"]}, cfg,
                           torch.device("cpu"), progress=False)


def run_model(key: str, base: Path, overrides: list[str], out: Path) -> dict:
    """Untrained score, then training, of one ablation model; returns its result entry."""
    from retrieval.data import build_splits

    name, extra = MODELS[key]
    cfg = load_config(base, [*overrides, *extra, f"train.out_dir={out / 'runs' / key}"])
    print(f"== {name} ==", flush=True)
    splits = build_splits(dataclasses.replace(cfg.data, cache=False))
    start = time.perf_counter()
    untrained = untrained_metrics(cfg, splits)
    untrained_s = time.perf_counter() - start
    start = time.perf_counter()
    result = train(cfg, overwrite=True)
    wall = time.perf_counter() - start
    log = pd.read_csv(Path(result.run_dir) / "metrics.csv")
    keys = [f"recall@{k}" for k in cfg.eval.recall_k] + ["map@r", "r_precision"]
    trained = {k: float(result.row[k]) for k in keys if k in result.row}
    entry = {
        "name": name, "overrides": extra, "untrained": untrained, "trained": trained,
        "epochs": int(result.row["epoch"]), "steps": int(result.row["step"]),
        "train_s": float(log["epoch_time_s"].sum()), "wall_s": wall, "untrained_eval_s": untrained_s,
        "images_per_s": float(log["images_per_s"].mean()), "run_dir": str(result.run_dir),
        "train_images": len(splits["train"]), "test_images": len(splits["test"]),
        "train_classes": splits["train"].num_classes, "test_classes": splits["test"].num_classes,
    }
    print(f"   untrained R@1 {100 * untrained['recall@1']:.2f}  trained R@1 {100 * trained['recall@1']:.2f}  "
          f"({entry['epochs']} epochs, {entry['train_s']:.0f} s training, {wall:.0f} s with evaluation)", flush=True)
    return entry


def table(entries: list[dict], ks: list[int]) -> list[str]:
    head = ["model", "weights"] + [f"R@{k}" for k in ks] + ["MAP@R", "training s", "epochs"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for e in entries:
        for kind in ("untrained", "trained"):
            m = e[kind]
            cells = [e["name"], kind] + [f"{100 * m[f'recall@{k}']:.2f}" for k in ks] + [f"{100 * m['map@r']:.2f}"]
            cells += [f"{e['train_s']:.0f}", str(e["epochs"])] if kind == "trained" else ["–", "0"]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def pictures(entries: list[dict], cfg: Config, out: Path) -> list[str]:
    """Recall@K curves of the runs and the attention picture of the CBAM model (needs matplotlib)."""
    made = []
    try:
        from retrieval.checkpoint import load_model
        from retrieval.data import build_splits
        from retrieval.viz import attention_figure, recall_curve

        recall_curve([Path(e["run_dir"]) / "metrics.csv" for e in entries], out / "cub_mini_recall.png",
                     labels=[e["name"] for e in entries], title="CUB_mini test species (51-100), from scratch")
        made.append(str(out / "cub_mini_recall.png"))
        cbam = [e for e in entries if "model.cbam=true" in e["overrides"]]
        if cbam:
            model, model_cfg, _ = load_model(Path(cbam[0]["run_dir"]) / "last.pt")
            test = build_splits(dataclasses.replace(cfg.data, cache=False))["test"]
            firsts = test.records.groupby("label", sort=True).head(1)["path"].tolist()
            step = max(1, len(firsts) // 4)
            attention_figure(model, firsts[::step][:4], model_cfg, out / "cub_mini_attention.png")
            made.append(str(out / "cub_mini_attention.png"))
    except ImportError as err:
        print(f"(pictures skipped: {err})")
    return made


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="base config (default configs/cub_mini.yaml)")
    p.add_argument("--root", help="CUB_mini folder (default: the config's data.root)")
    p.add_argument("--epochs", type=int, help="epoch budget per model (default: the config's train.epochs)")
    p.add_argument("--steps-per-epoch", type=int, help="cap steps per epoch (quick runs; default: a full pass)")
    p.add_argument("--models", default="abc", help="which of a, b, c to run (default abc)")
    p.add_argument("--out", default="runs/bench/cub_mini", help="results folder (run folders under runs/)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides for every model")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    overrides = list(args.overrides)
    if args.root:
        overrides.append(f"data.root={args.root}")
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.steps_per_epoch is not None:
        overrides.append(f"train.steps_per_epoch={args.steps_per_epoch}")
    base = load_config(args.config, overrides)
    root = Path(base.data.root)
    if not (root / "images.txt").is_file():
        print(f"skipped: CUB_mini not found at {root} (no images.txt); see ../shared/data/README.md")
        return 0
    if set(args.models) - set(MODELS) or not args.models:
        p.error(f"--models: expected letters from {''.join(MODELS)}, got {args.models!r}")

    out = Path(args.out)
    start = time.perf_counter()
    entries = [run_model(key, Path(args.config), overrides, out) for key in sorted(set(args.models))]
    total = time.perf_counter() - start
    head = header()
    steps = f", at most {base.train.steps_per_epoch} steps per epoch" if base.train.steps_per_epoch else ""
    budget = (f"epochs per model: {base.train.epochs}{steps}; batch {base.data.batch_size} "
              f"({base.data.batch_size // base.data.m_per_class} species × {base.data.m_per_class}), "
              f"{base.data.image_size} px, seed {base.train.seed}, precision {base.train.precision}")
    e0 = entries[0]
    lines = [
        f"CUB_mini ablation, from scratch: train {e0['train_classes']} species ({e0['train_images']} images), "
        f"test {e0['test_classes']} unseen species ({e0['test_images']} images, leave-one-out)",
        f"{machine_line(head)}", f"budget: {budget}; took {total / 60:.1f} min in all", "",
        *table(entries, base.eval.recall_k), "",
        "Trained = the last epoch's model (no selection on the test species); training s = time in training "
        "steps, without evaluation.",
        f"command: python -m benchmarks.bench_cub_mini {' '.join(argv if argv is not None else sys.argv[1:])}", "",
    ]
    print("\n".join(lines))
    result = {"benchmark": "cub_mini", **head, "budget": budget, "total_s": total, "config": str(args.config),
              "overrides": overrides, "models": entries}
    result["pictures"] = pictures(entries, base, out)
    write_results(out, "cub_mini", result, "\n".join(lines))
    print(f"wrote {out / 'cub_mini.json'}, {out / 'cub_mini.md'}" +
          "".join(f", {p}" for p in result["pictures"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
