"""`retrieval-viz`: pictures from the command line (matplotlib needed: pip install matplotlib).

    retrieval-viz attention --checkpoint runs/cub/best.pt bird1.jpg bird2.jpg --out attention.png
    retrieval-viz explain --checkpoint runs/cub/best.pt query.jpg result.jpg --out explain.png  # why they match
    retrieval-viz curve runs/a/metrics.csv runs/b --labels plain cbam --out recall.png
    retrieval-viz scores --checkpoint runs/cub/last.pt --out scores.png   # same- vs different-class cosines
    retrieval-viz localisation --checkpoint runs/demo/train/last.pt --limit 300   # does it look at the object?

``localisation`` scores Grad-CAM of the embedding, each attention gate and a centre prior
against object masks (generated data) or bounding boxes (CUB, Cars): pointing game (Zhang et
al. 2016) and the share of the map's energy inside the object (Score-CAM, Wang et al. 2020).
"""
from __future__ import annotations

import argparse
import sys

from .common import UsageError, add_logging_args, command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="retrieval-viz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="picture", required=True)
    att = sub.add_parser("attention", help="Grad-CAM of the embedding, then the attention gates (CBAM, BAM) per stage")
    att.add_argument("--checkpoint", required=True, metavar="CKPT", help="trained checkpoint (*.pt)")
    att.add_argument("images", nargs="+", metavar="IMAGE", help="images, one row each (at most 16)")
    att.add_argument("--out", required=True, metavar="OUT.png", help="picture to write")
    att.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default cpu)")
    why = sub.add_parser("explain", help="why two images match: where their cosine comes from, on each image")
    why.add_argument("--checkpoint", required=True, metavar="CKPT", help="trained checkpoint (*.pt)")
    why.add_argument("query", metavar="QUERY", help="query image")
    why.add_argument("result", metavar="RESULT", help="result image (e.g. the query's top hit)")
    why.add_argument("--out", required=True, metavar="OUT.png", help="picture to write")
    why.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default cpu)")
    curve = sub.add_parser("curve", help="Recall@K and MAP@R over epochs from runs' metrics.csv")
    curve.add_argument("runs", nargs="+", metavar="RUN", help="metrics.csv files or run folders")
    curve.add_argument("--labels", nargs="+", metavar="LABEL", help="one legend label per run")
    curve.add_argument("--title", help="picture title")
    curve.add_argument("--out", required=True, metavar="OUT.png", help="picture to write")
    scores = sub.add_parser("scores", help="cosine scores of same-class vs different-class pairs of a split")
    scores.add_argument("--checkpoint", required=True, metavar="CKPT", help="trained checkpoint (*.pt)")
    scores.add_argument("--config", help="YAML config naming the data set (default: the checkpoint's own)")
    scores.add_argument("--split", default="test", help="split to embed: test (default), val, train, query, gallery")
    scores.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides (e.g. data.root=...)")
    scores.add_argument("--out", required=True, metavar="OUT.png", help="picture to write")
    scores.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    loc = sub.add_parser("localisation", help="pointing game and energy inside the object: Grad-CAM, gates, "
                                              "centre prior, on a data set with masks or boxes")
    loc.add_argument("--checkpoint", required=True, metavar="CKPT", help="trained checkpoint (*.pt)")
    loc.add_argument("--config", help="YAML config naming the data set (default: the checkpoint's own)")
    loc.add_argument("--split", default="test", help="split to score: test (default), val, train, query, gallery")
    loc.add_argument("--limit", type=int, metavar="N", help="score N images, evenly spread over the split")
    loc.add_argument("--batch-size", type=int, default=32, help="images per batch (bounds memory; default 32)")
    loc.add_argument("--json", action="store_true", help="print the scores as JSON instead of a table")
    loc.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides (e.g. data.root=...)")
    loc.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default cpu)")
    for p in (att, why, curve, scores, loc):
        add_logging_args(p)
    return parser


def _scores(args: argparse.Namespace):
    """Embed one split of the checkpoint's (or --config's) data and draw its score distributions."""
    import dataclasses

    from ..config import config_from_dict, load_config
    from ..data import build_splits
    from ..errors import DataError
    from ..embed import open_embedder
    from ..viz.scores import score_figure

    embedder = open_embedder(args.checkpoint, args.device, device_flag="--device")
    cfg = (load_config(args.config, args.overrides) if args.config else
           config_from_dict(dataclasses.asdict(embedder.cfg), args.overrides, stored=True, inference=True))
    data = dataclasses.replace(cfg.data, image_size=embedder.cfg.data.image_size, cache=False,
                               resize=max(cfg.data.resize, embedder.cfg.data.image_size))
    splits = build_splits(data)
    if args.split not in splits:
        raise DataError(f"--split {args.split}: the data set has splits {', '.join(sorted(splits))}")
    dataset = splits[args.split]
    dataset.transform = embedder.transform
    embeddings = embedder.embed_dataset(dataset, progress=not args.quiet)[0]
    summary = score_figure(embeddings, dataset.labels, args.out,
                           title=f"{args.checkpoint}: {args.split} split of {data.name} ({len(dataset)} images)")
    print(f"same-class mean {summary['same_mean']:.3f}, different-class mean {summary['diff_mean']:.3f}, "
          f"overlap {summary['overlap']:.2f}, mean-embedding norm {summary['mean_norm']:.3f}")
    return args.out


def _localisation(args: argparse.Namespace) -> int:
    """Score the checkpoint's maps against the split's masks or boxes; print a table or JSON."""
    import dataclasses
    import json

    from ..checkpoint import load_model
    from ..config import config_from_dict, load_config
    from ..data import build_splits
    from ..errors import DataError
    from ..localisation import tolerance
    from ..localisation_eval import format_table, score_localisation, select, skip_reason
    from ..runtime import resolve_device

    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit: expected a number of images >= 1, got {args.limit}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size: expected >= 1, got {args.batch_size}")
    model, model_cfg, _ = load_model(args.checkpoint, resolve_device(args.device, flag="--device"))
    cfg = (load_config(args.config, args.overrides) if args.config else
           config_from_dict(dataclasses.asdict(model_cfg), args.overrides, stored=True, inference=True))
    size = model_cfg.data.image_size
    data = dataclasses.replace(cfg.data, image_size=size, cache=False, resize=max(cfg.data.resize, size))
    splits = build_splits(data)
    if args.split not in splits:
        raise DataError(f"--split {args.split}: the data set has splits {', '.join(sorted(splits))}")
    dataset = splits[args.split]
    reason = skip_reason(dataset, select(len(dataset), args.limit))
    if reason is not None:
        print(f"localisation skipped for the {args.split} split of {data.name} ({data.root}): {reason}")
        return 0
    scores = score_localisation(model, dataset, size, args.batch_size, args.limit, show_progress=not args.quiet)
    if args.json:
        print(json.dumps({"split": args.split, "data": data.name, "image_size": size, "scores": scores}, indent=2))
        return 0
    counted = max(s["images"] for s in scores.values())
    print(f"localisation on the {args.split} split of {data.name}: {counted} images with an object, maps at "
          f"{size}×{size} px, pointing-game tolerance {tolerance(size, size):.1f} px (15 at 224)")
    print(format_table({"": scores}))
    return 0


@command(build_parser)
def main(args: argparse.Namespace) -> int:
    if args.picture == "curve" and args.labels and len(args.labels) != len(args.runs):
        raise UsageError(f"--labels: {len(args.labels)} labels for {len(args.runs)} runs")
    if args.picture == "localisation":  # numbers only: no matplotlib needed
        return _localisation(args)
    try:
        from ..viz.plots import pyplot

        pyplot()
    except ImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.picture == "attention":
        from ..checkpoint import load_model
        from ..runtime import resolve_device
        from ..viz import attention_figure

        model, cfg, _ = load_model(args.checkpoint, resolve_device(args.device, flag="--device"))
        out = attention_figure(model, args.images, cfg, args.out)
    elif args.picture == "explain":
        from ..checkpoint import load_model
        from ..runtime import resolve_device
        from ..viz.explain import explain_figure, split_text

        model, cfg, _ = load_model(args.checkpoint, resolve_device(args.device, flag="--device"))
        explanation = explain_figure(model, args.query, args.result, cfg, args.out)
        print(f"{split_text(explanation)} ({explanation.note})")
        out = args.out
    elif args.picture == "scores":
        out = _scores(args)
    else:
        from ..viz import recall_curve

        out = recall_curve(args.runs, args.out, labels=args.labels, title=args.title)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
