"""`retrieval-viz`: pictures from the command line (matplotlib needed: pip install matplotlib).

    retrieval-viz attention --checkpoint runs/cub/best.pt bird1.jpg bird2.jpg --out attention.png
    retrieval-viz curve runs/a/metrics.csv runs/b --labels plain cbam --out recall.png
"""
from __future__ import annotations

import argparse
import sys

from .common import UsageError, add_logging_args, command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="retrieval-viz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="picture", required=True)
    att = sub.add_parser("attention", help="CBAM spatial attention per stage and Grad-CAM of the embedding")
    att.add_argument("--checkpoint", required=True, metavar="CKPT", help="checkpoint of a model with CBAM")
    att.add_argument("images", nargs="+", metavar="IMAGE", help="images, one row each (at most 16)")
    att.add_argument("--out", required=True, metavar="OUT.png", help="picture to write")
    att.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default cpu)")
    curve = sub.add_parser("curve", help="Recall@K and MAP@R over epochs from runs' metrics.csv")
    curve.add_argument("runs", nargs="+", metavar="RUN", help="metrics.csv files or run folders")
    curve.add_argument("--labels", nargs="+", metavar="LABEL", help="one legend label per run")
    curve.add_argument("--title", help="picture title")
    curve.add_argument("--out", required=True, metavar="OUT.png", help="picture to write")
    for p in (att, curve):
        add_logging_args(p)
    return parser


@command(build_parser)
def main(args: argparse.Namespace) -> int:
    if args.picture == "curve" and args.labels and len(args.labels) != len(args.runs):
        raise UsageError(f"--labels: {len(args.labels)} labels for {len(args.runs)} runs")
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
    else:
        from ..viz import recall_curve

        out = recall_curve(args.runs, args.out, labels=args.labels, title=args.title)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
