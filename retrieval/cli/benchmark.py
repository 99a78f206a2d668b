"""`retrieval-benchmark`: Recall@K / MAP@R / R-precision of a checkpoint, beside the CGD paper's numbers.

The data set and protocol come from ``--config`` (default: the checkpoint's own config) plus
``section.key=value`` overrides: leave-one-out on the test split (CUB, Cars196, SOP) or
queries against the gallery (In-Shop); K = the config's ``eval.recall_k``. The model is
always the checkpoint's, evaluated at the image size it was trained with unless
``data.image_size=...`` is given. Writes ``recall_<data.name>.json`` and ``.md`` to ``--out``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

from ..provenance import header, machine_line
from .common import add_checkpoint_arg, add_logging_args, command, new_parser

PUBLISHED_COLUMN = "published (CGD paper)"
STANDARD_K = {"cub": [1, 2, 4, 8], "cars": [1, 2, 4, 8], "sop": [1, 10, 100, 1000],
              "inshop": [1, 10, 20, 30, 40, 50]}  # DESIGN.md "Metrics"


def build_parser() -> argparse.ArgumentParser:
    from ..runtime import PRECISIONS

    parser = new_parser("retrieval-benchmark", "Evaluate a checkpoint on a data set's test protocol (Recall@K, "
                        "MAP@R, R-precision) and print it beside the CGD paper's published Recall@K.",
                        "retrieval-benchmark --checkpoint runs/cub200/best.pt --config configs/cub200.yaml "
                        "data.root=/data/CUB_200_2011")
    add_checkpoint_arg(parser)
    parser.add_argument("--config", help="YAML config naming the data set and eval.recall_k "
                                         "(default: the checkpoint's own config)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="config overrides, e.g. data.root=/data/CUB_200_2011 data.crop=true")
    parser.add_argument("--out", default="runs/benchmark", metavar="DIR",
                        help="folder for recall_<dataset>.json and .md (default runs/benchmark)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--batch-size", type=int, help="images per forward pass (default: the config's "
                                                       "eval.batch_size)")
    parser.add_argument("--workers", type=int, help="data-loader worker processes (default: data.num_workers)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="auto: bf16 on CPUs with native bf16, AMP on CUDA")
    add_logging_args(parser)
    return parser


def resolve_eval_config(args: argparse.Namespace, state: dict, trained):
    """The evaluation config: --config (or the checkpoint's) + overrides, at the trained image size."""
    from ..config import config_from_dict, load_config
    from ..errors import ConfigError

    if args.config:
        cfg = load_config(args.config, args.overrides)
    else:
        try:
            cfg = config_from_dict(state["config"], args.overrides, stored=True)
        except ConfigError as err:
            raise ConfigError(f"{args.checkpoint} (its stored config with the overrides): {err}") from None
    if not any(o.split("=", 1)[0].strip() == "data.image_size" for o in args.overrides):
        size = trained.data.image_size
        cfg.data = dataclasses.replace(cfg.data, image_size=size, resize=max(cfg.data.resize, size))
    cfg.data.cache = False  # evaluation reads each image once
    if args.workers is not None:
        cfg.data.num_workers = args.workers
    if args.batch_size is not None:
        cfg.eval.batch_size = args.batch_size
    cfg.train.precision = args.precision
    cfg.train.channels_last = trained.train.channels_last
    return cfg


def _protocol(splits: dict) -> str:
    if "test" in splits:
        test = splits["test"]
        return f"leave-one-out on the test split ({len(test)} images, {test.num_classes} classes)"
    return (f"query/gallery ({len(splits['query'])} queries against {len(splits['gallery'])} gallery images, "
            f"{splits['gallery'].num_classes} items)")


def _pct(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def _rows(metrics: dict, ks: list[int], published) -> list[tuple[str, str, str]]:
    """(metric, ours %, published %) rows: Recall@K for the config's K, then MAP@R and R-precision."""
    rows = []
    for k in ks:
        paper = published.at(k) if published is not None else None
        rows.append((f"R@{k}", _pct(metrics.get(f"recall@{k}")), "n/a" if paper is None else f"{paper:.1f}"))
    for key, name in (("map@r", "MAP@R"), ("r_precision", "R-precision")):
        if key in metrics:
            rows.append((name, _pct(metrics[key]), "n/a"))  # the CGD paper reports Recall@K only
    return rows


def _describe_model(cfg) -> str:
    m = cfg.model
    return (f"{m.backbone}{' + CBAM' if m.cbam else ''}, CGD {m.descriptors}, {m.embedding_dim}-d, "
            f"pretrained={m.pretrained}")


def format_report(result: dict) -> tuple[str, str]:
    """(plain-text table for the terminal, Markdown) of a benchmark result."""
    d, pub = result["dataset"], result["published"]
    ours_crop = "bounding-box crops" if d["crop"] else "no crop"
    title = (f"Recall@K of {result['checkpoint']} on {d['name']} ({d['root']}): {d['protocol']}, "
             f"{d['image_size']} px, {ours_crop}")
    notes = [f"ours: {result['model']}; {ours_crop}; evaluated in {result['seconds']:.1f} s"]
    if pub is not None:
        notes.append(f"{PUBLISHED_COLUMN}: {pub['setting']}, {pub['crop']}; {pub['source']}. "
                     "n/a = not reported or not verified; copied from the paper, not measured here")
    else:
        notes.append(f"{PUBLISHED_COLUMN}: the paper reports no numbers for data.name={d['name']}")
    if d["name"] in STANDARD_K and result["recall_k"] != STANDARD_K[d["name"]]:
        notes.append(f"note: eval.recall_k={result['recall_k']} differs from the standard K list of "
                     f"{d['name']} {STANDARD_K[d['name']]}")
    rows = result["rows"]
    width = max(len(r[0]) for r in rows + [("metric", "", "")])
    text = [title, f"{'metric':<{width}}  {'ours (%)':>9}  {PUBLISHED_COLUMN + ' (%)'}"]
    text += [f"{m:<{width}}  {o:>9}  {p:>{len(PUBLISHED_COLUMN) + 4}}" for m, o, p in rows]
    md = [f"# {title}", "", machine_line(result), "",
          f"| metric | ours (%) | {PUBLISHED_COLUMN} (%) |", "| --- | ---: | ---: |"]
    md += [f"| {m} | {o} | {p} |" for m, o, p in rows]
    md += [""] + [f"- {n}" for n in notes] + [f"- command: `{result['command']}`", ""]
    return "\n".join(text + notes) + "\n", "\n".join(md)


@command(build_parser)
def main(args: argparse.Namespace) -> int:
    from ..checkpoint import load_model
    from ..config import to_dict, to_yaml
    from ..data import build_splits
    from ..evaluate import evaluate_splits
    from ..files import atomic_write_text, sha256_file
    from ..published import published_recall
    from ..runtime import resolve_device

    device = resolve_device(args.device, flag="--device")
    model, trained, state = load_model(args.checkpoint, device)
    cfg = resolve_eval_config(args, state, trained)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    splits = {k: v for k, v in build_splits(cfg.data).items() if k != "train"}
    start = time.perf_counter()
    metrics = evaluate_splits(model, splits, cfg, device, progress=not args.quiet)
    seconds = time.perf_counter() - start

    published = published_recall(cfg.data.name)
    result = {
        "benchmark": "recall", **header(), "command": args.command_line,
        "checkpoint": str(args.checkpoint), "checkpoint_sha256": sha256_file(args.checkpoint),
        "checkpoint_epoch": state.get("epoch"), "model": _describe_model(trained),
        "dataset": {"name": cfg.data.name, "root": cfg.data.root, "crop": cfg.data.crop,
                    "image_size": cfg.data.image_size, "protocol": _protocol(splits),
                    "train_classes": cfg.data.train_classes, "test_classes": cfg.data.test_classes},
        "recall_k": list(cfg.eval.recall_k), "metrics": metrics, "seconds": seconds,
        "published": None if published is None else {
            "column": PUBLISHED_COLUMN, "source": published.source, "setting": published.setting,
            "crop": published.crop_text, "recall_percent": {str(k): v for k, v in published.recall.items()}},
        "config": to_dict(cfg),
    }
    result["rows"] = _rows(metrics, cfg.eval.recall_k, published)
    text, markdown = format_report(result)
    print(text, end="")
    out = Path(args.out)
    name = f"recall_{cfg.data.name}"
    atomic_write_text(out / f"{name}.json", json.dumps(result, indent=2, default=str) + "\n")
    atomic_write_text(out / f"{name}.md", markdown)
    print(f"wrote {out / name}.json and {name}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
