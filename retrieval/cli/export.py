"""`retrieval-export`: a checkpoint's embedding path as an ONNX or TorchScript file, checked against the eager model."""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from ..errors import ConfigError
from .common import add_checkpoint_arg, add_logging_args, command, new_parser

# What the ONNX path needs beyond the base install (the project's 'export' extra).
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


def build_parser() -> argparse.ArgumentParser:
    from ..models.export import FORMATS

    parser = new_parser("retrieval-export", "Write a checkpoint's embedding path (images → L2-normalised embeddings) "
                        "as an ONNX or TorchScript file and check that it gives the eager model's embeddings.",
                        "retrieval-export --checkpoint runs/cub/best.pt --format onnx --out cub.onnx")
    add_checkpoint_arg(parser)
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="onnx (needs the 'export' extra: onnx, onnxscript, onnxruntime) or torchscript")
    parser.add_argument("--out", required=True, metavar="FILE", help="the file to write (replaced if it exists)")
    parser.add_argument("--tolerance", type=float, default=1e-4, metavar="T",
                        help="largest |exported - eager| embedding difference the parity check accepts (default 1e-4)")
    add_logging_args(parser)
    return parser


def _check_args(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    if out.is_dir():
        raise ConfigError(f"--out {out}: is a folder; expected a file name")
    if args.tolerance <= 0:
        raise ConfigError(f"--tolerance: expected > 0, got {args.tolerance}")
    missing = [p for p in ONNX_PACKAGES if importlib.util.find_spec(p) is None] if args.format == "onnx" else []
    if missing:
        raise ConfigError(f"--format onnx needs {', '.join(missing)}: pip install {' '.join(missing)} (or the "
                          "project's 'export' extra)")
    return out


@command(build_parser)
def main(args: argparse.Namespace) -> int:
    out = _check_args(args)  # refusals of the arguments come first, before the checkpoint loads
    from ..checkpoint import load_model
    from ..models.export import export, parity

    model, cfg, _ = load_model(args.checkpoint, "cpu")
    size = cfg.data.image_size
    export(model, out, args.format, size)
    worst = parity(model, out, args.format, size)
    if worst > args.tolerance:
        out.unlink()
        print(f"error: {out}: the exported model's embeddings differ from the eager model's by up to {worst:.2e} "
              f"(tolerance {args.tolerance:g}); the file was removed", file=sys.stderr)
        return 1
    print(f"wrote {out} ({args.format}: images batch×3×{size}×{size} → {cfg.model.embedding_dim}-d embeddings); "
          f"parity with the eager model: max |difference| {worst:.1e} (tolerance {args.tolerance:g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
