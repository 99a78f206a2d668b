"""`build_index.py` / `retrieval-build-index`: embed a gallery with a checkpoint and write an index folder."""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
from pathlib import Path

from ..errors import ConfigError, DataError
from .common import add_checkpoint_arg, add_embedding_args, add_logging_args, command, new_parser, open_embedder_from


# A rank whose shard is already done waits at a barrier while the others embed theirs (hours on
# a large gallery), and every rank waits while rank 0 trains: torch's 30-minute default is too short.
DIST_TIMEOUT = datetime.timedelta(hours=24)


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("build_index.py", "Embed gallery images with a trained checkpoint and write a FAISS index "
                        "folder (index.faiss, metadata.csv, manifest.json).", "build_index.py --checkpoint "
                        "runs/cub/best.pt --out indexes/cub --dataset-config configs/cub200.yaml --split test")
    add_checkpoint_arg(parser)
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
    parser.add_argument("--save-embeddings", action="store_true",
                        help="also write embeddings.npy (N, dim) float32: what query.py --eval compares an "
                             "approximate index with")
    scale = parser.add_argument_group("under torchrun (WORLD_SIZE > 1): each rank embeds a slice, writes a shard, "
                                      "rank 0 merges them on disk (docs/scaling.md)")
    scale.add_argument("--train-size", type=int, metavar="N",
                       help="train the IVF quantizer / PQ codebooks on N gallery vectors sampled from the ranks "
                            "(default: all)")
    scale.add_argument("--keep-shards", action="store_true",
                       help="keep the work folder .INDEX_DIR.shards (trained index, shards) after the merge")
    add_embedding_args(parser)
    add_logging_args(parser)
    return parser


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


def _dataset_gallery_once(args: argparse.Namespace, cfg, info):
    """``_dataset_gallery``; under torchrun rank 0 first, so a data set that is prepared on first use (the
    synthetic one is generated) is written by one process while the others wait."""
    if info is None:
        return _dataset_gallery(args, cfg)
    from ..parallel import barrier

    if not info.is_main:
        barrier(info)
    found = _dataset_gallery(args, cfg)
    if info.is_main:
        barrier(info)
    return found


def _source_table(args: argparse.Namespace):
    from ..data import table_from_csv, table_from_folder

    if args.images:
        return table_from_folder(args.images, folder_labels=args.folder_labels), f"images:{Path(args.images).resolve()}"
    return table_from_csv(args.csv), f"csv:{Path(args.csv).resolve()}"


def _check_distributed_flags(args: argparse.Namespace, world_size: int) -> None:
    if world_size <= 1:
        for flag, value in (("--train-size", args.train_size), ("--keep-shards", args.keep_shards)):
            if value:
                raise ConfigError(f"{flag} only applies to a build under torchrun (WORLD_SIZE > 1)")
        return
    if args.append:
        raise ConfigError("--append: not available under torchrun (a distributed build writes a new on-disk index)")
    if not args.index_type:
        raise ConfigError("--index-type: a build under torchrun needs an IVF factory (e.g. IVF4096,Flat or "
                          "IVF65536,PQ64)")
    if args.train_size is not None and args.train_size < 1:
        raise ConfigError(f"--train-size: expected >= 1, got {args.train_size}")


def _check_appendable(out: Path) -> None:
    """Refuse --append to a merged on-disk index before the (long) embedding pass."""
    from ..index import read_manifest

    if read_manifest(out).get("ondisk"):
        raise ConfigError(f"--append: {out} is a merged on-disk index (built under torchrun), which cannot be "
                          "appended to; rebuild it with the new images (--overwrite)")


def _check_before_process_group(args: argparse.Namespace, table) -> None:
    """Under torchrun: what every rank would refuse alike (the checkpoint, the factory, --train-size) is checked
    before the process group is set up, so a bad flag fails at once instead of after rendezvous."""
    from ..checkpoint import checkpoint_config, read_checkpoint
    from ..index import check_factory, check_shardable

    dim = int(checkpoint_config(read_checkpoint(args.checkpoint), args.checkpoint).model.embedding_dim)
    check_shardable(args.index_type, dim)
    if table is not None:
        check_factory(args.index_type, dim, len(table[0]))
        if args.train_size is not None and args.train_size < len(table[0]):
            try:
                check_factory(args.index_type, dim, args.train_size)
            except DataError as err:
                raise ConfigError(f"--train-size {args.train_size}: too small a sample: {err}") from None


def _build_distributed(args: argparse.Namespace, embedder, dataset, metadata, source: str, info) -> dict | None:
    """Every rank embeds its slice and writes its shard; rank 0 merges (retrieval.index.distributed)."""
    from torch.utils.data import Subset

    from ..index import build_distributed_index, check_factory, check_shardable

    check_shardable(args.index_type, embedder.dim)
    check_factory(args.index_type, embedder.dim, len(metadata))  # before the (long) embedding pass
    if args.train_size is not None and args.train_size < len(metadata):
        try:
            check_factory(args.index_type, embedder.dim, args.train_size)
        except DataError as err:
            raise ConfigError(f"--train-size {args.train_size}: too small a sample: {err}") from None
    progress = not args.quiet and info.is_main

    def embed(start: int, stop: int):
        if dataset is not None:
            return embedder.embed_dataset(Subset(dataset, range(start, stop)), progress)[0]
        return embedder.embed_table(metadata.iloc[start:stop], progress)

    return build_distributed_index(embed, metadata, args.out, factory=args.index_type, rank=info.rank,
                                   world_size=info.world_size, checkpoint_sha256=embedder.sha256,
                                   train_size=args.train_size, manifest_extra=embedder.manifest_fields(source),
                                   overwrite=args.overwrite, keep_shards=args.keep_shards,
                                   save_embeddings=args.save_embeddings)


def _check_out(args: argparse.Namespace, world_size: int) -> bool:
    """Refuse an --out this build may not write (before anything loads); True when appending to an existing index."""
    from ..index import check_replaceable

    out = Path(args.out)
    appending = args.append and out.exists()
    if out.exists() and not (args.append or args.overwrite):
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it" + (
            " (a build under torchrun writes a new index; it cannot --append)" if world_size > 1
            else " or --append to add to it"))
    check_replaceable(out)  # --overwrite / --append only ever touch an index folder of this project
    if appending:
        _check_appendable(out)
    return appending


def _join_process_group(args: argparse.Namespace, table, world_size: int):
    """Under torchrun: the early checks every rank shares, then the process group (its DistInfo); else None."""
    if world_size <= 1:
        return None
    from ..parallel import init_distributed

    _check_before_process_group(args, table)
    return init_distributed(args.device, timeout=DIST_TIMEOUT)


def _check_append_target(args: argparse.Namespace, embedder) -> None:
    """--append: the existing index must come from this checkpoint and keep its index type."""
    from ..index import check_compatible, read_manifest

    out = Path(args.out)
    manifest = read_manifest(out)
    check_compatible(manifest, out, embedder.dim, embedder.sha256)
    if args.index_type and args.index_type != manifest["factory"]:
        raise ConfigError(f"--index-type {args.index_type}: {out} is a '{manifest['factory']}' index; "
                          "--append keeps its type (use --overwrite to rebuild)")


def _gallery(args: argparse.Namespace, embedder, table, info):
    """(dataset or None, metadata table, source text) of the images to index."""
    if table is None:
        dataset, metadata = _dataset_gallery_once(args, embedder.cfg, info)
        return dataset, metadata, f"dataset:{args.dataset_config}:{args.split or dataset.records['split'].iloc[0]}"
    (metadata, source) = table
    return None, metadata, source


def _run_distributed(args: argparse.Namespace, embedder, dataset, metadata, source: str, info) -> None:
    """Build on every rank, leave the process group, and (rank 0) say what was written."""
    from ..parallel import shutdown

    try:
        manifest = _build_distributed(args, embedder, dataset, metadata, source, info)
    finally:
        shutdown(info)
    if manifest is not None:
        print(f"indexed {len(metadata)} images on {info.world_size} ranks → {Path(args.out)} "
              f"({manifest['count']} entries, dim {manifest['dim']}, {manifest['factory']}, lists on disk)")


def _run_local(args: argparse.Namespace, embedder, dataset, metadata, source: str, appending: bool) -> None:
    """Embed the gallery in this process, write (or append to) the folder, and say what was written."""
    from ..gallery import build_gallery
    from ..index import check_factory

    factory = args.index_type or "Flat"
    if not appending:
        check_factory(factory, embedder.dim, len(metadata))  # before the (long) embedding pass
    progress = not args.quiet
    embeddings = (embedder.embed_dataset(dataset, progress)[0] if dataset is not None
                  else embedder.embed_table(metadata, progress))
    manifest = build_gallery(embedder, embeddings, metadata, args.out, source, factory=factory,
                             overwrite=args.overwrite, append=args.append, save_embeddings=args.save_embeddings)
    verb = "added" if appending else "indexed"
    print(f"{verb} {len(metadata)} images → {Path(args.out)} ({manifest['count']} entries, dim {manifest['dim']}, "
          f"{manifest['factory']})")


@command(build_parser)
def main(args: argparse.Namespace) -> int:
    if args.split and not args.dataset_config:
        raise ConfigError("--split only applies to --dataset-config")
    from ..parallel import world_size_from_env

    world_size = world_size_from_env()
    _check_distributed_flags(args, world_size)
    appending = _check_out(args, world_size)
    table = None if args.dataset_config else _source_table(args)  # missing files fail before the model loads
    info = _join_process_group(args, table, world_size)
    embedder = open_embedder_from(args)
    if appending:
        _check_append_target(args, embedder)
    dataset, metadata, source = _gallery(args, embedder, table, info)
    # --runtime onnxruntime-int8: the activation ranges come from the images being embedded (every
    # rank of a torchrun job picks the same ones, so all shards are embedded by one int8 model)
    if dataset is not None:
        embedder.calibrate_on(dataset)
    else:
        embedder.calibrate_on_table(metadata)
    if info is not None:
        _run_distributed(args, embedder, dataset, metadata, source, info)
    else:
        _run_local(args, embedder, dataset, metadata, source, appending)
    return 0


if __name__ == "__main__":
    sys.exit(main())
