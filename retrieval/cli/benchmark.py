"""`retrieval-benchmark`: Recall@K / MAP@R / R-precision of a checkpoint, beside the CGD paper's numbers.

The data set and protocol come from ``--config`` (default: the checkpoint's own config) plus
``section.key=value`` overrides: leave-one-out on the test split (CUB, Cars196, SOP) or
queries against the gallery (In-Shop); K = the config's ``eval.recall_k``. The model is
always the checkpoint's, evaluated at the image size it was trained with unless
``data.image_size=...`` is given. ``--index-type`` adds a column: the same protocol searched
through that FAISS index (built in memory over the test embeddings), with its k-NN recall
against exact search, so the cost of an IVF / PQ setting shows next to exact Recall@K.
``--rerank NAME[:k=v,...]`` (or the config's ``rerank``) adds a column instead: the same
protocol re-ranked (αQE, DBA, k-reciprocal; docs/reranking.md), with ms / query of both.
Writes ``recall_<data.name>.json`` and ``.md`` to ``--out``.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

from ..provenance import header, machine_line, write_results
from .common import add_checkpoint_arg, add_device_args, add_logging_args, command, new_parser

PUBLISHED_COLUMN = "published (CGD paper)"
STANDARD_K = {"cub": [1, 2, 4, 8], "cars": [1, 2, 4, 8], "sop": [1, 10, 100, 1000],
              "inshop": [1, 10, 20, 30, 40, 50]}  # DESIGN.md "Metrics"


def build_parser() -> argparse.ArgumentParser:
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
    parser.add_argument("--index-type", metavar="FACTORY",
                        help="also search the protocol through this FAISS index (e.g. IVF64,PQ16) and report its "
                             "metrics and k-NN recall beside exact search")
    parser.add_argument("--rerank", metavar="NAME[:k=v,...]",
                        help="also re-rank the exact lists and report them beside the plain ones: none | aqe | dba | "
                             "dba_aqe | kreciprocal, e.g. kreciprocal:k1=20,k2=6,lambda=0.3 (default: the config's "
                             "rerank section)")
    parser.add_argument("--nprobe", type=int, help="with an IVF --index-type: lists visited per query, >= 1 "
                                                   "(default 16)")
    parser.add_argument("--batch-size", type=int, help="images per forward pass (default: the config's "
                                                       "eval.batch_size)")
    parser.add_argument("--workers", type=int, help="data-loader worker processes (default: data.num_workers)")
    add_device_args(parser)
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
            cfg = config_from_dict(state["config"], args.overrides, stored=True, inference=True)
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
    return cfg


def _protocol(splits: dict) -> str:
    if "test" in splits:
        test = splits["test"]
        return f"leave-one-out on the test split ({len(test)} images, {test.num_classes} classes)"
    return (f"query/gallery ({len(splits['query'])} queries against {len(splits['gallery'])} gallery images, "
            f"{splits['gallery'].num_classes} items)")


def _pct(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def _rows(metrics: dict, ks: list[int], published, comparison: dict | None = None,
          rerank: dict | None = None) -> list[tuple[str, ...]]:
    """(metric, ours %, [index % or re-ranked %,] published %) rows: Recall@K for the config's K, MAP@R,
    R-precision, then (with an index comparison) its k-NN recall, and the time per query of each search."""
    index = comparison["index"] if comparison else (rerank["reranked"] if rerank else None)
    rows = []
    for k in ks:
        paper = published.at(k) if published is not None else None
        cells = [_pct(metrics.get(f"recall@{k}"))] + ([_pct(index.get(f"recall@{k}"))] if index else [])
        rows.append((f"R@{k}", *cells, "n/a" if paper is None else f"{paper:.1f}"))
    for key, name in (("map@r", "MAP@R"), ("r_precision", "R-precision")):
        if key in metrics:  # the CGD paper reports Recall@K only
            rows.append((name, _pct(metrics[key]), *([_pct(index.get(key))] if index else []), "n/a"))
    if comparison:
        rows += [(f"kNN-recall@{key.split('@')[1]}", "100.00", _pct(v), "n/a")
                 for key, v in comparison["knn_recall"].items()]
        ms = comparison["ms_per_query"]
        rows.append(("ms / query", f"{ms['exact']:.3f}", f"{ms['index']:.3f}", "n/a"))
    if rerank:
        ms = rerank["ms_per_query"]
        rows.append(("ms / query", f"{ms['plain']:.3f}", f"{ms['reranked']:.3f}", "n/a"))
    return rows


def _describe_model(cfg) -> str:
    m = cfg.model
    attention = "" if m.attention == "none" else f" + {m.attention.upper()}"
    return (f"{m.backbone}{attention}, CGD {m.descriptors}, {m.embedding_dim}-d, "
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
    rows, comparison, rerank = result["rows"], result.get("index_comparison"), result.get("rerank_comparison")
    head = ["metric", "ours (%)"] + ([f"{comparison['index_setting']} (%)"] if comparison else []) + \
        ([f"re-ranked {rerank['rerank']} (%)"] if rerank else []) + [PUBLISHED_COLUMN + " (%)"]
    if comparison:
        notes.insert(1, f"{head[2]}: the same protocol searched through that FAISS index, built over the test "
                        "embeddings; kNN-recall@K = share of the exact top-K it returns")
    if rerank:
        notes.insert(1, f"{head[2]}: the exact lists re-ranked (docs/reranking.md); ms / query counts the first "
                        f"pass and the re-ranking; once per gallery: {rerank['prepare_s']:.2f} s")
    widths = [max(len(str(r[i])) for r in rows + [tuple(head)]) for i in range(len(head))]
    text = [title, "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths)))]
    text += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    md = [f"# {title}", "", machine_line(result), "", "| " + " | ".join(head) + " |",
          "| --- |" + " ---: |" * (len(head) - 1)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += [""] + [f"- {n}" for n in notes] + [f"- command: `{result['command']}`", ""]
    return "\n".join(text + notes) + "\n", "\n".join(md)


def _rerank_spec(args: argparse.Namespace, cfg):
    """The re-ranker to add a column for: --rerank, else the config's rerank section; None for none."""
    from ..errors import ConfigError
    from ..rerank import RerankSpec, parse_rerank

    spec = parse_rerank(args.rerank) if args.rerank else RerankSpec(cfg.rerank.name, cfg.rerank.args)
    if spec.name == "none":
        return None
    if args.index_type:
        raise ConfigError(f"--rerank {spec} and --index-type {args.index_type}: give one (re-ranking is measured "
                          "over exact search)")
    return spec


def _check_args(args: argparse.Namespace) -> Path:
    """Refusals of the flags alone (before the model loads); the --out folder."""
    from ..errors import ConfigError

    if args.nprobe is not None and args.nprobe < 1:
        raise ConfigError(f"--nprobe: expected >= 1, got {args.nprobe}")
    if args.nprobe is not None and not args.index_type:
        raise ConfigError("--nprobe only applies with an IVF --index-type (e.g. --index-type IVF64,Flat); without "
                          "--index-type the benchmark searches exactly")
    if args.nprobe is not None and "IVF" not in args.index_type:
        print(f"note: --nprobe only applies to IVF indexes; '{args.index_type}' ignores it", file=sys.stderr)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file; expected a folder (created if missing) for "
                          "recall_<dataset>.json and .md")
    if args.rerank:  # a bad spec fails before the model loads
        from ..rerank import parse_rerank

        parse_rerank(args.rerank)
    return out


def _evaluate(args: argparse.Namespace, embedder, splits: dict, cfg, spec) -> tuple[dict, dict | None, dict | None]:
    """(metrics, index comparison or None, re-ranking comparison or None) of the protocol."""
    from ..evaluate import evaluate_splits, evaluate_with_index, evaluate_with_rerank

    if spec is not None:
        metrics, rerank = evaluate_with_rerank(embedder, splits, cfg, spec, progress=not args.quiet)
        return metrics, None, rerank
    if args.index_type:
        nprobe = 16 if args.nprobe is None else args.nprobe
        return (*evaluate_with_index(embedder, splits, cfg, args.index_type, nprobe, progress=not args.quiet), None)
    return evaluate_splits(embedder, splits, cfg, progress=not args.quiet), None, None


def _result(args: argparse.Namespace, cfg, trained, state: dict, splits: dict, seconds: float, metrics: dict,
            comparison: dict | None, rerank: dict | None) -> dict:
    """The recall_<dataset>.json record: provenance, data set, metrics, published numbers, table rows."""
    from ..config import to_dict
    from ..files import sha256_file
    from ..published import published_recall

    published = published_recall(cfg.data.name)
    result = {
        "benchmark": "recall", **header(), "command": args.command_line,
        "checkpoint": str(args.checkpoint), "checkpoint_sha256": sha256_file(args.checkpoint),
        "checkpoint_epoch": state.get("epoch"), "model": _describe_model(trained), "precision": args.precision, "runtime": args.runtime, "compile": args.compile,
        "dataset": {"name": cfg.data.name, "root": cfg.data.root, "crop": cfg.data.crop,
                    "image_size": cfg.data.image_size, "protocol": _protocol(splits),
                    "train_classes": cfg.data.train_classes, "test_classes": cfg.data.test_classes},
        "recall_k": list(cfg.eval.recall_k), "metrics": metrics, "seconds": seconds,
        "published": None if published is None else {
            "column": PUBLISHED_COLUMN, "source": published.source, "setting": published.setting,
            "crop": published.crop_text, "recall_percent": {str(k): v for k, v in published.recall.items()}},
        "config": to_dict(cfg), **({"index_comparison": comparison} if comparison else {}),
        **({"rerank_comparison": rerank} if rerank else {}),
    }
    result["rows"] = _rows(metrics, cfg.eval.recall_k, published, comparison, rerank)
    return result


@command(build_parser)
def main(args: argparse.Namespace) -> int:
    from ..checkpoint import load_model
    from ..config import to_yaml
    from ..data import build_splits
    from ..embed import Embedder
    from ..execution import COMPILE_BACKEND
    from ..runtime import resolve_device

    out = _check_args(args)
    device = resolve_device(args.device, flag="--device")
    model, trained, state = load_model(args.checkpoint, device)
    cfg = resolve_eval_config(args, state, trained)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    spec = _rerank_spec(args, cfg)
    splits = {k: v for k, v in build_splits(cfg.data).items() if k != "train"}
    if args.index_type:  # a factory that cannot be built fails before the embedding pass
        from ..index import check_factory

        check_factory(args.index_type, trained.model.embedding_dim, len(splits.get("test") or splits["gallery"]))
    embedder = Embedder(model, device, args.precision, batch_size=cfg.eval.batch_size, workers=cfg.data.num_workers,
                        runtime=args.runtime, compile=COMPILE_BACKEND if args.compile else None)
    embedder.calibrate_on(splits.get("test") or splits["gallery"])  # onnxruntime-int8: on gallery images
    start = time.perf_counter()
    metrics, comparison, rerank = _evaluate(args, embedder, splits, cfg, spec)
    result = _result(args, cfg, trained, state, splits, time.perf_counter() - start, metrics, comparison, rerank)
    text, markdown = format_report(result)
    print(text, end="")
    name = f"recall_{cfg.data.name}"
    write_results(out, name, result, markdown)
    print(f"wrote {out / name}.json and {name}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
