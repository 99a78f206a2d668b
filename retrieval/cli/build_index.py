"""`build_index.py` / `retrieval-build-index`: embed a gallery with a checkpoint and write an index folder."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ..errors import ConfigError, DataError
from .common import add_logging_args, cli_main, setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="build_index.py",
        description="Embed gallery images with a trained checkpoint and write a FAISS index folder "
                    "(index.faiss, metadata.csv, manifest.json). Example: build_index.py --checkpoint "
                    "runs/cub/best.pt --out indexes/cub --dataset-config configs/cub200.yaml --split test")
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="trained checkpoint (*.pt)")
    parser.add_argument("--out", required=True, metavar="INDEX_DIR", help="index folder to write")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset-config", metavar="CFG", help="YAML config whose data section names the gallery")
    source.add_argument("--images", metavar="DIR", help="every image under DIR (recursive)")
    source.add_argument("--csv", metavar="FILE", help="CSV with columns path[,label][,split]; paths relative to it")
    parser.add_argument("--split", help="with --dataset-config: the split to index (default: test, or gallery "
                                        "for query/gallery data sets)")
    parser.add_argument("--folder-labels", action="store_true",
                        help="with --images: label = the first sub-folder's name (DIR/<class>/...)")
    parser.add_argument("--index-type", metavar="FACTORY",
                        help="FAISS factory string: Flat (exact, default), IVF1024,Flat, HNSW32, IVF4096,PQ64, ... "
                             "(with --append: the existing index's)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--append", action="store_true", help="add the images to the existing index in --out")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing index folder")
    parser.add_argument("--save-embeddings", action="store_true", help="also write embeddings.npy (N, dim) float32")
    add_embedding_args(parser)
    add_logging_args(parser)
    return parser


def add_embedding_args(parser: argparse.ArgumentParser) -> None:
    """Flags shared with query.py: how images are embedded."""
    parser.add_argument("--batch-size", type=int,
                        help="images per forward pass (default: the checkpoint's eval.batch_size)")
    parser.add_argument("--workers", type=int, default=2, help="data-loader worker processes (default 2)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="auto: bf16 on CPUs with native bf16, AMP on CUDA")


def load_embedder(args: argparse.Namespace):
    """(model, config, checkpoint sha256, device) of ``args.checkpoint``."""
    from ..checkpoint import load_model
    from ..files import sha256_file
    from ..runtime import resolve_device

    device = resolve_device(args.device)
    model, cfg, _ = load_model(args.checkpoint, device)
    return model, cfg, sha256_file(args.checkpoint), device


def embed_images(model, cfg, table, device, args: argparse.Namespace):
    """(N, D) embeddings of ``table["path"]`` with the checkpoint's test transform."""
    from ..data import build_transforms
    from ..embed import embed_table

    transform = build_transforms(cfg.data, train=False)
    return embed_table(model, table, transform, device, args.batch_size or cfg.eval.batch_size, args.workers,
                       args.precision, cfg.train.channels_last, progress=not args.quiet)


def _dataset_gallery(args: argparse.Namespace, cfg):
    """(dataset, metadata) of one split of the data set --dataset-config names, at the checkpoint's image size."""
    from ..config import load_config
    from ..data import build_splits

    data = load_config(args.dataset_config).data
    data = dataclasses.replace(data, image_size=cfg.data.image_size, resize=max(data.resize, cfg.data.image_size),
                               cache=False)
    splits = build_splits(data)
    split = args.split or ("test" if "test" in splits else "gallery")
    if split not in splits:
        raise DataError(f"--split {split}: {args.dataset_config} has splits {', '.join(sorted(splits))}")
    dataset = splits[split]
    records = dataset.records
    label = records["class_name"] if "class_name" in records.columns else records["label"]
    return dataset, records[["path"]].assign(label=label, split=records["split"])


def _embed_dataset(model, cfg, dataset, device, args):
    from ..data import build_eval_loader
    from ..embed import embed_dataset

    loader = build_eval_loader(dataset, args.batch_size or cfg.eval.batch_size, args.workers)
    embeddings, _ = embed_dataset(model, loader, device, args.precision, cfg.train.channels_last,
                                  progress=not args.quiet)
    return embeddings


def _source_table(args: argparse.Namespace):
    from ..embed import table_from_csv, table_from_folder

    if args.images:
        return table_from_folder(args.images, folder_labels=args.folder_labels), f"images:{Path(args.images).resolve()}"
    return table_from_csv(args.csv), f"csv:{Path(args.csv).resolve()}"


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    if args.split and not args.dataset_config:
        raise ConfigError("--split only applies to --dataset-config")
    from ..config import to_dict
    from ..index import build_index, check_compatible, check_factory, read_manifest

    out = Path(args.out)
    appending = args.append and out.exists()
    if out.exists() and not (args.append or args.overwrite):
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it or --append to add to it")
    table = None if args.dataset_config else _source_table(args)  # missing files fail before the model loads
    model, cfg, sha, device = load_embedder(args)
    dim = cfg.model.embedding_dim
    factory = args.index_type or "Flat"
    if appending:
        manifest = read_manifest(out)
        check_compatible(manifest, out, dim, sha)
        if args.index_type and args.index_type != manifest["factory"]:
            raise ConfigError(f"--index-type {args.index_type}: {out} is a '{manifest['factory']}' index; "
                              "--append keeps its type (use --overwrite to rebuild)")
    if table is None:
        dataset, metadata = _dataset_gallery(args, cfg)
        source = f"dataset:{args.dataset_config}:{args.split or dataset.records['split'].iloc[0]}"
    else:
        (metadata, source), dataset = table, None
    if not appending:
        check_factory(factory, dim, len(metadata))  # before the (long) embedding pass
    embeddings = (_embed_dataset(model, cfg, dataset, device, args) if dataset is not None
                  else embed_images(model, cfg, metadata, device, args))
    extra = {"checkpoint": str(Path(args.checkpoint).resolve()), "checkpoint_sha256": sha, "source": source,
             "image_size": cfg.data.image_size, "config": to_dict(cfg)}
    manifest = build_index(embeddings, metadata, out, factory=factory, manifest_extra=extra,
                           overwrite=args.overwrite, append=args.append, save_embeddings=args.save_embeddings)
    verb = "added" if appending else "indexed"
    print(f"{verb} {len(metadata)} images → {out} ({manifest['count']} entries, dim {manifest['dim']}, "
          f"{manifest['factory']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
