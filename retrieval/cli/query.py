"""`query.py` / `retrieval-query`: top-K gallery images for query images, as a table, JSON, CSV or a picture."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError, ImageError
from .common import (add_checkpoint_and_index_args, add_embedding_args, add_logging_args, check_embedding_flags,
                     command, new_parser, open_embedder_from)

NPROBE = 16  # --nprobe's default on an IVF index


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("query.py", "Find the K most similar gallery images of each query image in an index "
                        "folder built by build_index.py with the same checkpoint.",
                        "query.py --checkpoint runs/cub/best.pt --index indexes/cub -k 5 bird.jpg --grid top5.png")
    add_checkpoint_and_index_args(parser)
    parser.add_argument("-k", "--top-k", type=int, default=10, help="results per query (default 10)")
    parser.add_argument("paths", nargs="*", metavar="IMAGE", help="query images")
    parser.add_argument("--images", metavar="DIR", help="every image under DIR (recursive) is a query")
    parser.add_argument("--csv", metavar="FILE", help="CSV of queries: path[,label]; paths relative to it")
    parser.add_argument("--folder-labels", action="store_true",
                        help="with --images: query label = the first sub-folder's name")
    parser.add_argument("--format", choices=["table", "json", "csv"], default="table",
                        help="stdout format: readable table (default), json or csv (query, rank, score, gallery "
                             "path, gallery label)")
    parser.add_argument("--grid", metavar="OUT.png", help="also draw each query beside its top-K thumbnails")
    parser.add_argument("--explain", metavar="DIR",
                        help="also draw, per query, why its top result matches (pair explanation: SPoC exact, "
                             "GeM/MAC first-order) into DIR, one PNG each")
    parser.add_argument("--eval", action="store_true",
                        help="score labelled queries against the gallery (Recall@K, MAP@R, R-precision) instead "
                             "of listing results")
    parser.add_argument("--recall-k", metavar="K,K,...", help="K values for --eval (default: the checkpoint's "
                                                             "eval.recall_k)")
    parser.add_argument("--exact-sample", type=int, default=None, metavar="N",
                        help="--eval on an approximate index (IVF, PQ, HNSW): also score N of the queries by exact "
                             "search over the folder's embeddings.npy (build_index.py --save-embeddings), beside the "
                             "index on the same N (default 1000; 0: off)")
    parser.add_argument("--rerank", metavar="NAME[:k=v,...]",
                        help="re-rank the results: none | aqe | dba | dba_aqe | kreciprocal, e.g. aqe:n=2,alpha=3 "
                             "(docs/reranking.md); with --eval, plain and re-ranked metrics side by side. An "
                             "approximate index needs embeddings.npy (build_index.py --save-embeddings)")
    parser.add_argument("--nprobe", type=int, help=f"IVF indexes: lists visited per query, >= 1 (default {NPROBE})")
    parser.add_argument("--ef-search", type=int, help="HNSW indexes: candidate list size, >= 1 (FAISS default 16)")
    add_embedding_args(parser)
    add_logging_args(parser)
    return parser


def _queries(args: argparse.Namespace) -> pd.DataFrame:
    from ..data import table_from_csv, table_from_folder, table_from_paths

    given = [bool(args.paths), bool(args.images), bool(args.csv)]
    if sum(given) != 1:
        raise ConfigError("give the queries one way: image paths, --images DIR or --csv FILE")
    if args.images:
        return table_from_folder(args.images, folder_labels=args.folder_labels)
    if args.csv:
        return table_from_csv(args.csv)
    return table_from_paths(args.paths)


def _check_decodable(paths: list[str], workers: int) -> None:
    from ..data import verify_images

    bad = verify_images(paths, num_workers=max(1, workers))
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise ImageError("unreadable query image(s): " + "; ".join(f"{p}: {why}" for p, why in bad[:3]) + more)


def _recall_ks(text: str) -> list[int]:
    """--recall-k's K values: positive integers separated by commas."""
    try:
        ks = [int(k) for k in text.split(",")]
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        raise ConfigError(f"--recall-k {text}: expected K values >= 1 separated by commas, e.g. 1,2,4,8")
    return ks


def _check_search_flags(args: argparse.Namespace) -> None:
    for flag, value in (("--nprobe", args.nprobe), ("--ef-search", args.ef_search)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag}: expected >= 1, got {value}")
    if args.recall_k is not None and not args.eval:
        raise ConfigError("--recall-k only applies with --eval")
    if args.recall_k is not None:
        _recall_ks(args.recall_k)


def _apply_search_flags(args: argparse.Namespace, factory: str) -> None:
    """A note for a search flag the index type ignores; --nprobe's default on an IVF index."""
    for flag, value, kind in (("--nprobe", args.nprobe, "IVF"), ("--ef-search", args.ef_search, "HNSW")):
        if value is not None and kind not in factory:
            print(f"note: {flag} only applies to {kind} indexes; {args.index} is a '{factory}' index, so it is "
                  "ignored", file=sys.stderr)
    if args.nprobe is None and "IVF" in factory:
        args.nprobe = NPROBE


def _label_codes(query_labels: pd.Series, gallery_labels: pd.Series,
                 removed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Text labels → ints shared by queries and gallery; unlabelled and removed gallery entries match nothing
    (a removed entry must not count among a class's relevant items, R of MAP@R)."""
    names = {name: i for i, name in enumerate(sorted(set(query_labels) | set(gallery_labels) - {""}))}
    gallery = np.array([names.get(v, -2 - i) if v else -2 - i for i, v in enumerate(gallery_labels)], np.int64)
    if removed is not None:
        gallery[removed] = -2 - removed
    return np.array([names[v] for v in query_labels], np.int64), gallery


def _evaluate(args, settings, queries, gallery, embeddings) -> tuple[dict[str, float], dict | None]:
    """(metrics of every query through the index, its comparison with exact search on a sample or None)."""
    from ..approximation import DEFAULT_SAMPLE, compare_with_exact
    from ..index.exact import is_exact
    from ..metrics import metrics_from_neighbours, neighbours_needed

    unlabelled = queries["label"] == ""
    if unlabelled.any():
        raise DataError(f"--eval needs a label for every query; {int(unlabelled.sum())} have none, e.g. "
                        f"{queries['path'][unlabelled].iloc[0]} (give --csv with a label column or --folder-labels)")
    if not (gallery.metadata["label"] != "").any():
        from ..index import metadata_path

        raise DataError(f"--eval needs labels on the gallery: the 'label' column of "
                        f"{metadata_path(gallery.folder, gallery.manifest)} is empty for every entry (build the "
                        "index with --csv with a label column, --images with --folder-labels, or --dataset-config)")
    ks = _recall_ks(args.recall_k) if args.recall_k else list(settings.recall_k)
    q_codes, g_codes = _label_codes(queries["label"], gallery.metadata["label"], gallery.removed_ids)
    depth = neighbours_needed(ks, g_codes, settings.map_at_r, gallery.count)
    _, ids = gallery.search(embeddings, depth, args.nprobe, args.ef_search)
    result = metrics_from_neighbours(ids, q_codes, g_codes, ks=ks, map_at_r=settings.map_at_r)
    sample = DEFAULT_SAMPLE if args.exact_sample is None else args.exact_sample
    if is_exact(gallery.index) or sample == 0:
        return result, None
    comparison = compare_with_exact(gallery, embeddings, q_codes, g_codes, ks, depth, nprobe=args.nprobe,
                                    ef_search=args.ef_search, sample=sample, map_at_r=settings.map_at_r)
    if comparison is None:
        print(f"note: {gallery.folder} is an approximate {gallery.manifest['factory']} index without "
              "embeddings.npy, so it is not compared with exact search (build it with --save-embeddings)",
              file=sys.stderr)
    return result, comparison


def _print_results(queries: pd.DataFrame, results: list[pd.DataFrame], fmt: str) -> None:
    if fmt == "csv":
        flat = pd.concat([r.assign(query=path, query_label=label) for path, label, r in
                          zip(queries["path"], queries["label"], results)], ignore_index=True)
        cols = ["query", "query_label", "rank", "score", "gallery_id", "gallery_path", "gallery_label"]
        print(flat[cols].to_csv(index=False, float_format="%.6f"), end="")
    elif fmt == "json":
        out = [{"query": path, "label": label, "results": r.to_dict("records")}
               for path, label, r in zip(queries["path"], queries["label"], results)]
        print(json.dumps(out, indent=2, default=lambda v: v.item()))
    else:
        for path, label, r in zip(queries["path"], queries["label"], results):
            print(f"query {path}" + (f"  (label {label})" if label else ""))
            shown = r[["rank", "score", "gallery_label", "gallery_path"]].rename(
                columns={"gallery_label": "label", "gallery_path": "path"})
            print(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
            print()


def _evaluate_rerank(args, settings, queries, gallery, embeddings, access, spec) -> dict:
    """``plain_vs_reranked`` of the labelled queries through the folder's index: metrics and ms / query of both."""
    from ..rerank import plain_vs_reranked

    ks = [int(k) for k in args.recall_k.split(",")] if args.recall_k else list(settings.recall_k)
    q_codes, g_codes = _label_codes(queries["label"], gallery.metadata["label"])
    return plain_vs_reranked(embeddings, q_codes, spec, ks, gallery=access, gallery_labels=g_codes,
                             map_at_r=settings.map_at_r)


def _print_metrics(result: dict[str, float], comparison: dict | None, fmt: str, n_query: int, n_gallery: int,
                   setting: str, rerank: dict | None = None) -> None:
    if fmt == "json":
        print(json.dumps({"queries": n_query, "gallery": n_gallery, "index": setting, **result,
                          **({"exact_comparison": comparison} if comparison else {}),
                          **({"rerank": rerank} if rerank else {})}, indent=2))
        return
    if fmt == "csv":
        rows = dict(result)
        if comparison:
            rows.update({f"sample_index_{k}": v for k, v in comparison["index"].items()})
            rows.update({f"sample_exact_{k}": v for k, v in comparison["exact"].items()})
            rows.update(comparison["knn_recall"])
            rows.update({f"ms_per_query_{k}": v for k, v in comparison["ms_per_query"].items()})
        if rerank:
            rows.update({f"reranked_{k}": v for k, v in rerank["reranked"].items()})
            rows.update({f"rerank_ms_per_query_{k}": v for k, v in rerank["ms_per_query"].items()})
        print("metric,value\n" + "".join(f"{k},{v:.6f}\n" for k, v in rows.items()), end="")
        return
    print(f"{n_query} queries against {n_gallery} gallery images ({setting})")
    if rerank:
        print(f"  {'metric':<12s} {'plain':>8s} {'re-ranked ' + rerank['rerank']}")
        for key, value in result.items():
            print(f"  {key:<12s} {value:8.4f} {rerank['reranked'][key]:8.4f}")
        ms = rerank["ms_per_query"]
        print(f"  {'ms / query':<12s} {ms['plain']:8.3f} {ms['reranked']:8.3f}")
    for key, value in ({} if rerank else result).items():
        print(f"  {key:<12s} {value:.4f}")
    if comparison:
        print(f"\nthe index against exact search (embeddings.npy) on {comparison['sample']} of the queries:")
        print(f"  {'metric':<14s} {'index':>8s} {'exact':>8s}")
        for key, exact in comparison["exact"].items():
            print(f"  {key:<14s} {comparison['index'][key]:8.4f} {exact:8.4f}")
        for key, value in comparison["knn_recall"].items():
            print(f"  {key:<14s} {value:8.4f}    (share of the exact top-{key.split('@')[1]} the index returns)")
        ms = comparison["ms_per_query"]
        print(f"  {'ms / query':<14s} {ms['index']:8.3f} {ms['exact']:8.3f}")


def _check_explain(folder: str) -> None:
    """--explain needs matplotlib and a folder (not a file): checked before anything is computed."""
    from ..viz.plots import pyplot

    if Path(folder).exists() and not Path(folder).is_dir():
        raise ConfigError(f"--explain {folder}: exists and is not a folder")
    try:
        pyplot()
    except ImportError as err:
        raise ConfigError(f"--explain: {err}") from None


def _explain(folder: str, embedder, queries: pd.DataFrame, results: list[pd.DataFrame]) -> None:
    """DIR/<n>_<query name>.png: why each query matches its top result (retrieval/explain.py)."""
    from ..viz.explain import explain_figure

    Path(folder).mkdir(parents=True, exist_ok=True)
    for n, (path, frame) in enumerate(zip(queries["path"], results)):
        if len(frame):
            out = Path(folder) / f"{n:03d}_{Path(path).stem}.png"
            explain_figure(embedder.model, path, frame["gallery_path"].iloc[0], embedder.cfg, out)
    print(f"wrote {sum(len(f) > 0 for f in results)} pair explanation(s) to {folder}", file=sys.stderr)


def _open_embedder(args: argparse.Namespace):
    """The checkpoint's cached ONNX model when --runtime onnxruntime has one (``retrieval.onnx_cache``: no
    torch import, no export), else the checkpoint itself (which, under onnxruntime, exports and caches it)."""
    check_embedding_flags(args)
    cacheable = (args.runtime == "onnxruntime" and not args.explain and not args.compile
                 and args.device in ("auto", "cpu") and args.precision in ("auto", "fp32"))
    if cacheable:
        from ..onnx_cache import open_cached_embedder

        threads = int(os.environ["OMP_NUM_THREADS"]) if os.environ.get("OMP_NUM_THREADS", "").isdigit() else None
        cached = open_cached_embedder(args.checkpoint, batch_size=args.batch_size, workers=args.workers,
                                      threads=threads)
        if cached is not None:
            return cached
    return open_embedder_from(args)


@command(build_parser)
def main(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise ConfigError(f"-k: expected >= 1, got {args.top_k}")
    if args.exact_sample is not None and not args.eval:
        raise ConfigError("--exact-sample only applies with --eval")
    if args.exact_sample is not None and args.exact_sample < 0:
        raise ConfigError(f"--exact-sample: expected >= 0, got {args.exact_sample}")
    _check_search_flags(args)
    if args.grid:
        from PIL import Image

        if Path(args.grid).suffix.lower() not in Image.registered_extensions():
            raise ConfigError(f"--grid {args.grid}: unknown image extension (use .png or .jpg)")
    if args.explain:
        _check_explain(args.explain)
    from ..approximation import search_setting
    from ..gallery import open_gallery
    from ..rerank import gallery_access, parse_rerank, rerank_search

    spec = parse_rerank(args.rerank) if args.rerank else None

    queries = _queries(args)  # nonexistent paths fail first, then a broken index, before the model loads
    gallery = open_gallery(args.index)
    if gallery.count == 0:
        raise DataError(f"{args.index}: the index has no live entries (every entry was removed); add images with "
                        "build_index.py --append or rebuild it")
    _apply_search_flags(args, gallery.manifest.get("factory", ""))
    embedder = _open_embedder(args)
    gallery.check_model(embedder)
    if args.runtime == "onnxruntime-int8":  # the int8 ranges come from the gallery's images, as in retrieval-serve
        embedder.calibrate_on_table(gallery.live_metadata())
    _check_decodable(queries["path"].tolist(), args.workers)
    access = gallery_access(gallery, args.nprobe, args.ef_search) if spec and spec.name != "none" else None
    embeddings = embedder.embed_table(queries, progress=not args.quiet)
    if args.eval:
        result, comparison = _evaluate(args, embedder.eval_settings, queries, gallery, embeddings)
        rerank = (_evaluate_rerank(args, embedder.eval_settings, queries, gallery, embeddings, access, spec)
                  if access else None)
        setting = search_setting(gallery.manifest.get("factory", "?"), args.nprobe, args.ef_search)
        _print_metrics(result, comparison, args.format, len(queries), gallery.count, setting, rerank)
    if access is not None:
        results = gallery.results(*rerank_search(embeddings, access, args.top_k, spec))
    else:
        results = gallery.results(*gallery.search(embeddings, args.top_k, args.nprobe, args.ef_search))
    if not args.eval:
        _print_results(queries, results, args.format)
    if args.grid:
        from ..viz import Hit, save_retrieval_grid

        hits = [[Hit(r.gallery_path, r.score, r.gallery_label) for r in frame.itertuples()] for frame in results]
        save_retrieval_grid(args.grid, queries["path"].tolist(), hits, queries["label"].tolist())
        print(f"wrote {args.grid}", file=sys.stderr)
    if args.explain:
        _explain(args.explain, embedder, queries, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
