"""Re-ranking with honest parameters: chosen on validation classes, reported on the test classes.

For αQE, DBA, DBA + αQE and k-reciprocal (retrieval.rerank, docs/reranking.md):

(a) each method's parameters come from a small grid searched on the validation split
    (training classes held out of training, ``data.val_classes``; leave-one-out), ranked by
    MAP@R, then Recall@1; DBA + αQE takes DBA's chosen (n, α) and searches αQE's grid on top;
(b) the test split (leave-one-out, never used to choose) gets the table none / αQE / DBA /
    DBA + αQE / k-reciprocal: Recall@1/2/4/8, MAP@R, R-precision, ms / query (first pass
    included; DBA's once-per-gallery augmentation reported apart).

Embeddings come from a checkpoint and a data config (the checkpoint should have been trained
with the same ``data.val_classes``, or the validation classes were trained on: a warning says
so), or are generated (``--synthetic``: clustered unit vectors, validation and test classes
drawn alike but disjoint). ``--synthetic-memory`` instead re-ranks 60,000 × 512 generated
clustered unit vectors (leave-one-out, top-100) with each method at its default parameters
and reports the time and the peak memory above the embeddings (goal < 2 GB).

    python -m benchmarks.bench_rerank --checkpoint runs/cub_mini/best.pt --config configs/cub_mini.yaml \\
        data.root=../shared/data/CUB_mini data.val_classes=10 --out benchmarks/results/DATE
    python -m benchmarks.bench_rerank --synthetic --out /tmp/rerank            # generated data, ~1 min
    python -m benchmarks.bench_rerank --synthetic-memory --out /tmp/rerank     # 60,000 × 512, minutes

Writes rerank.json / rerank.md (or rerank_memory.*) to --out. In the memory mode each method
runs in its own process, so memory one method freed cannot hide the next one's peak.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from retrieval.rerank import RerankSpec, plain_vs_reranked, rerank_search, resolve_rerank

from .bench_metrics import measure
from .common import header, machine_line, write_results

log = logging.getLogger(__name__)

KS = [1, 2, 4, 8]
METHODS = ["none", "aqe", "dba", "dba_aqe", "kreciprocal"]
# name → {argument: values}: small on purpose (the validation split is small; a fine grid overfits it)
GRIDS: dict[str, dict[str, list]] = {
    "aqe": {"n": [1, 2, 3, 5, 10, 20], "alpha": [0.0, 1.0, 3.0]},
    "dba": {"n": [1, 2, 3, 5, 10], "alpha": [0.0, 3.0]},
    "kreciprocal": {"k1": [10, 20, 30], "k2": [1, 3, 6], "lambda": [0.1, 0.3, 0.6]},
}
COLUMNS = [*(f"recall@{k}" for k in KS), "map@r", "r_precision"]


def clustered(n: int, dim: int, classes: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors around ``classes`` random centres (per-class spread varies ×0.7..1.3), float32, in chunks."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim), dtype=np.float32)
    scale = (spread * rng.uniform(0.7, 1.3, classes)).astype(np.float32)
    labels = rng.permutation(np.arange(n) % classes).astype(np.int64)
    x = np.empty((n, dim), np.float32)
    for start in range(0, n, 8192):
        lab = labels[start:start + 8192]
        x[start:start + len(lab)] = centres[lab] + scale[lab, None] * rng.standard_normal((len(lab), dim),
                                                                                          dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, labels


def _score(metrics: dict) -> tuple[float, float]:
    return metrics["map@r"], metrics["recall@1"]


def grid_search(x: np.ndarray, y: np.ndarray, name: str, grid: dict[str, list], fixed: dict | None = None
                ) -> tuple[RerankSpec, list[dict]]:
    """The spec of ``name`` with the best validation (MAP@R, Recall@1) over ``grid``, and every tried row."""
    tried, best = [], None
    for values in itertools.product(*grid.values()):
        args = {**(fixed or {}), **dict(zip(grid, values))}
        if name == "kreciprocal" and args["k2"] > args["k1"]:
            continue
        spec = resolve_rerank(name, args)
        metrics = plain_vs_reranked(x, y, spec, KS)["reranked"]
        tried.append({"spec": str(spec), **metrics})
        if best is None or _score(metrics) > _score(best[1]):
            best = (spec, metrics)
    log.info("%s: chose %s on validation (MAP@R %.4f)", name, best[0], best[1]["map@r"])
    return best[0], tried


def choose(x_val: np.ndarray, y_val: np.ndarray, candidates: int) -> tuple[dict[str, RerankSpec], dict]:
    """Each method's spec chosen on the validation embeddings; {method: tried rows}."""
    chosen, tried = {"none": RerankSpec()}, {}
    for name in ("aqe", "dba"):
        chosen[name], tried[name] = grid_search(x_val, y_val, name, GRIDS[name])
    dba_args = {"dba_n": chosen["dba"].args["n"], "dba_alpha": chosen["dba"].args["alpha"]}
    chosen["dba_aqe"], tried["dba_aqe"] = grid_search(x_val, y_val, "dba_aqe", GRIDS["aqe"], dba_args)
    chosen["kreciprocal"], tried["kreciprocal"] = grid_search(x_val, y_val, "kreciprocal", GRIDS["kreciprocal"],
                                                              {"candidates": candidates})
    return chosen, tried


def test_table(x: np.ndarray, y: np.ndarray, chosen: dict[str, RerankSpec]) -> list[dict]:
    """One row per method on the test embeddings: its spec, metrics, ms / query, once-per-gallery seconds."""
    rows = []
    for name in METHODS:
        result = plain_vs_reranked(x, y, chosen[name], KS)
        rows.append({"method": name, "spec": result["rerank"], **result["reranked"],
                     "ms_per_query": result["ms_per_query"]["reranked"], "prepare_s": result["prepare_s"]})
    return rows


def _markdown_table(rows: list[dict], keys: Sequence[str]) -> list[str]:
    names = {"map@r": "MAP@R", "r_precision": "R-precision"}
    head = ["method", "parameters (chosen on val)", *(names.get(k, k.replace("recall@", "R@")) for k in keys),
            "ms / query"]
    out = ["| " + " | ".join(head) + " |", "| --- | --- |" + " ---: |" * (len(head) - 2)]
    for r in rows:
        cells = [f"{100 * r[k]:.2f}" for k in keys]
        out.append(f"| {r['method']} | `{r['spec']}` | " + " | ".join(cells) + f" | {r['ms_per_query']:.3f} |")
    return out


def embeddings_from_checkpoint(args) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """(val x, val y, test x, test y, description) of a checkpoint on a data config's val and test splits."""
    import dataclasses

    from retrieval.checkpoint import load_model
    from retrieval.config import load_config
    from retrieval.data import build_splits
    from retrieval.embed import Embedder
    from retrieval.runtime import resolve_device

    device = resolve_device(args.device)
    model, trained, _ = load_model(args.checkpoint, device)
    cfg = load_config(args.config, args.overrides)
    if not any(o.startswith("data.image_size=") for o in args.overrides):
        size = trained.data.image_size
        cfg.data = dataclasses.replace(cfg.data, image_size=size, resize=max(cfg.data.resize, size))
    if cfg.data.val_classes == 0:
        raise SystemExit("bench_rerank: no validation classes; add data.val_classes=N (as the checkpoint was trained)")
    if trained.data.val_classes != cfg.data.val_classes:
        log.warning("the checkpoint was trained with data.val_classes=%d, not %d: the validation classes may have "
                    "been trained on, so the chosen parameters suit seen classes", trained.data.val_classes,
                    cfg.data.val_classes)
    splits = build_splits(cfg.data)
    if "test" not in splits:
        raise SystemExit("bench_rerank: the data set has a query/gallery protocol; this benchmark runs leave-one-out")
    embedder = Embedder(model, device, cfg.train.precision, batch_size=cfg.eval.batch_size,
                        workers=cfg.data.num_workers, flag="train.precision")
    out = []
    for name in ("val", "test"):
        out += list(embedder.embed_dataset(splits[name], progress=False))
    return (*out, f"{args.checkpoint} on {cfg.data.name} ({cfg.data.root}), {cfg.data.image_size} px, "
            f"{cfg.data.val_classes} validation classes")


def run_honest(args) -> int:
    if args.synthetic:
        x_val, y_val = clustered(args.val_n, args.dim, args.val_n // args.per_class, args.spread, seed=1)
        x_test, y_test = clustered(args.test_n, args.dim, args.test_n // args.per_class, args.spread, seed=2)
        source = (f"generated clustered unit vectors, {args.dim}-d, {args.per_class} per class, spread "
                  f"{args.spread}: val {args.val_n}, test {args.test_n}")
    else:
        x_val, y_val, x_test, y_test, source = embeddings_from_checkpoint(args)
    start = time.perf_counter()
    chosen, tried = choose(x_val, y_val, args.candidates)
    rows = test_table(x_test, y_test, chosen)
    seconds = time.perf_counter() - start
    result = {"benchmark": "rerank", **header(), "source": source, "val": {"n": len(y_val),
              "classes": int(len(np.unique(y_val)))}, "test": {"n": len(y_test), "classes": int(len(np.unique(y_test)))},
              "grids": GRIDS, "selection": "validation MAP@R, then Recall@1", "chosen": {k: str(v) for k, v in
                                                                                      chosen.items()},
              "tried": tried, "rows": rows, "seconds": seconds}
    md = [f"# Re-ranking on {source}", "", machine_line(result), "",
          f"Test split, leave-one-out: {len(y_test)} items, {result['test']['classes']} classes; parameters chosen on "
          f"the validation split ({len(y_val)} items, {result['val']['classes']} classes) by MAP@R, then Recall@1.",
          "", *_markdown_table(rows, COLUMNS), "",
          "- ms / query: the whole search of each query (first pass + re-ranking); DBA's once-per-gallery "
          "augmentation: " + ", ".join(f"{r['method']} {r['prepare_s']:.2f} s" for r in rows if r["method"] in ("dba", "dba_aqe")),
          f"- grids: {GRIDS} (DBA + αQE: αQE's grid over DBA's choice)", f"- {seconds:.0f} s in all", ""]
    write_results(args.out, "rerank", result, "\n".join(md))
    print("\n".join(md))
    return 0


def memory_row(args, name: str) -> dict:
    """Time and peak RSS above the embeddings of one method re-ranking every generated vector (leave-one-out)."""
    x, _ = clustered(args.n, args.dim, args.n // args.per_class, args.spread, seed=0)
    spec = resolve_rerank(name, {"candidates": args.candidates} if name == "kreciprocal" else None)
    _, seconds, peak = measure(lambda: rerank_search(x, x, args.k, spec, self_ids=np.arange(len(x))))
    return {"method": name, "spec": str(spec), "seconds": seconds, "ms_per_query": 1000 * seconds / len(x),
            "peak_extra_mb": peak}


def _memory_row_in_child(args, name: str) -> dict:
    """``memory_row`` in a fresh process, so memory one method freed cannot hide another's peak."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "benchmarks.bench_rerank", "--synthetic-memory", "--methods", name,
               "--n", str(args.n), "--dim", str(args.dim), "--k", str(args.k), "--per-class", str(args.per_class),
               "--spread", str(args.spread), "--candidates", str(args.candidates), "--out", tmp]
        subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[1])
        return json.loads((Path(tmp) / "rerank_memory.json").read_text())["rows"][0]


def run_memory(args) -> int:
    embeddings_mb = args.n * args.dim * 4 / 2 ** 20
    names = args.methods.split(",")
    rows = []
    for name in names:
        if len(names) > 1:  # the child prints its own line
            rows.append(_memory_row_in_child(args, name))
            continue
        rows.append(row := memory_row(args, name))
        print(f"{row['spec']:60s} {row['seconds']:8.1f} s  {row['peak_extra_mb']:8.0f} MB above the embeddings",
              flush=True)
    result = {"benchmark": "rerank_memory", **header(), "n": args.n, "dim": args.dim, "k": args.k,
              "embeddings_mb": embeddings_mb, "goal_mb": 2048, "rows": rows}
    md = [f"# Re-ranking memory: {args.n:,} × {args.dim} clustered unit vectors, leave-one-out, top-{args.k}", "",
          machine_line(result), "", f"Embeddings: {embeddings_mb:.0f} MB (not counted). Goal: < 2 GB above them.", "",
          "| method | spec | seconds | ms / query | peak MB above the embeddings |", "| --- | --- | ---: | ---: | ---: |"]
    md += [f"| {r['method']} | `{r['spec']}` | {r['seconds']:.1f} | {r['ms_per_query']:.3f} | {r['peak_extra_mb']:.0f} |"
           for r in rows]
    write_results(args.out, "rerank_memory", result, "\n".join(md + [""]))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="checkpoint whose embeddings are re-ranked")
    parser.add_argument("--config", help="data config (with data.val_classes) of the checkpoint's data set")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    parser.add_argument("--synthetic", action="store_true", help="generated embeddings instead of a checkpoint")
    parser.add_argument("--synthetic-memory", action="store_true", help="time and peak memory at 60,000 × 512")
    parser.add_argument("--n", type=int, default=60_000, help="--synthetic-memory: vectors")
    parser.add_argument("--dim", type=int, default=None, help="dimension (default 512 for memory, 64 for --synthetic)")
    parser.add_argument("--k", type=int, default=100, help="--synthetic-memory: results per query")
    parser.add_argument("--methods", default="none,aqe,dba,dba_aqe,kreciprocal", help="--synthetic-memory: methods")
    parser.add_argument("--val-n", type=int, default=600)
    parser.add_argument("--test-n", type=int, default=1200)
    parser.add_argument("--per-class", type=int, default=30, help="generated items per class")
    parser.add_argument("--spread", type=float, default=1.5, help="generated noise per dimension around a centre")
    parser.add_argument("--candidates", type=int, default=100, help="k-reciprocal: candidates per query")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="runs/bench", metavar="DIR")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.synthetic_memory:
        args.dim = args.dim or 512
        return run_memory(args)
    args.dim = args.dim or 64
    if not args.synthetic and not (args.checkpoint and args.config):
        parser.error("give --checkpoint and --config, or --synthetic, or --synthetic-memory")
    return run_honest(args)


if __name__ == "__main__":
    raise SystemExit(main())
