"""Top-10 search latency and recall@10 against exact search: Flat, IVF and HNSW on a clustered gallery.

The gallery is N × 512 unit vectors drawn around many cluster centres (classes), themselves
grouped in super-clusters (as SOP's 11k products in 12 categories); around its centre a point
varies mostly inside a shared low-dimensional subspace, plus a little isotropic noise, because
deep embeddings have an intrinsic dimension of tens, not hundreds (Ansuini et al. 2019,
"Intrinsic dimension of data representations in deep neural networks"). Unclustered random
vectors have no neighbourhood structure and defeat every approximate index; isotropic noise
around centres favours IVF and starves HNSW. Queries are fresh draws (not in the gallery).

For each index: build time (k-means training on a sample + adding), size (the serialised
size, which is what it holds in memory; the resident-set growth while it is built is in the
JSON), top-10 latency per query in one batch of queries and for single queries (median), and
recall@10 = the mean fraction of the exact top-10 (IndexFlatIP) that it returns, at several
nprobe (IVF) / efSearch (HNSW) settings. Searches go through ``retrieval.index.search`` (the
project's query path), the knobs through ``retrieval.index.set_search_params``.

Full size: 1M × 512 (2 GB of vectors, peak about 5 GB), about 10 minutes on 2 quiet cores,
half of it the HNSW build, with progress logs::

    python -m benchmarks.bench_index

Smoke size (seconds)::

    python -m benchmarks.bench_index --n 20000 --queries 200 --clusters 400 --superclusters 20 --ivf IVF64,Flat
"""
from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
import time

import faiss
import numpy as np

from retrieval.index import check_factory, search, set_search_params

from .common import header, machine_line, write_results

log = logging.getLogger("benchmarks.bench_index")

K = 10


def clustered_gallery(n: int, n_queries: int, dim: int, clusters: int, superclusters: int, centre_spread: float,
                      spread: float, rank: int, noise: float, seed: int = 0,
                      chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """(gallery (n, dim), queries (n_queries, dim)) float32 unit vectors around ``clusters`` centres.

    Super-centres are random unit vectors; each cluster centre is a super-centre plus Gaussian
    noise of norm ≈ ``centre_spread``, renormalised. Each point is its (uniformly drawn) cluster
    centre plus a variation of norm ≈ ``spread`` inside one shared ``rank``-dimensional subspace
    plus isotropic noise of norm ≈ ``noise``, renormalised. Generated in chunks (no 2× copy).
    """
    rng = np.random.default_rng(seed)

    def unit(v: np.ndarray) -> np.ndarray:
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return v

    supers = unit(rng.standard_normal((superclusters, dim), dtype=np.float32))
    centres = supers[rng.integers(0, superclusters, clusters)]
    centres = unit(centres + rng.standard_normal((clusters, dim), dtype=np.float32) * (centre_spread / dim ** 0.5))
    basis = rng.standard_normal((rank, dim), dtype=np.float32) * (spread / (rank * dim) ** 0.5)
    out = np.empty((n + n_queries, dim), dtype=np.float32)
    for start in range(0, len(out), chunk):
        stop = min(start + chunk, len(out))
        block = rng.standard_normal((stop - start, dim), dtype=np.float32)
        block *= noise / dim ** 0.5
        block += rng.standard_normal((stop - start, rank), dtype=np.float32) @ basis
        block += centres[rng.integers(0, clusters, stop - start)]
        out[start:stop] = unit(block)
    return out[:n], out[n:]


def _rss_mb() -> float:
    """Resident set size in MB (Linux; NaN elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return float("nan")


def index_bytes(index: faiss.Index) -> int:
    """Serialised size of ``index``, counted while FAISS writes it (no copy held): its memory footprint."""
    total = 0

    def count(chunk: bytes) -> None:
        nonlocal total
        total += len(chunk)

    faiss.write_index(index, faiss.PyCallbackIOWriter(count))
    return total


def recall_at_k(exact: np.ndarray, found: np.ndarray) -> float:
    """Mean fraction of each row of ``exact`` (Nq, k) ids present in the same row of ``found`` (Nq, k)."""
    hits = (found[:, :, None] == exact[:, None, :]).any(axis=1)
    return float(hits.mean())


def _median_seconds(fn, budget_s: float = 2.0, max_repeats: int = 20):
    """(median seconds of ``fn()``, its result), repeated until ``budget_s`` is spent (once when one call exceeds it)."""
    times = []
    while not times or (sum(times) < budget_s and len(times) < max_repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def _single_query_ms(index: faiss.Index, queries: np.ndarray, max_queries: int, budget_s: float) -> tuple[float, int]:
    """Median ms of one-query searches over the first queries (at least 3, until the budget is spent)."""
    times = []
    for i in range(min(max_queries, len(queries))):
        start = time.perf_counter()
        search(index, queries[i:i + 1], K)
        times.append(time.perf_counter() - start)
        if len(times) >= 3 and sum(times) > budget_s:
            break
    return statistics.median(times) * 1000, len(times)


def _build(factory: str, gallery: np.ndarray, args) -> tuple[faiss.Index, dict]:
    """An inner-product index of ``gallery``: trained on a sample (IVF), added in logged chunks."""
    dim = gallery.shape[1]
    gc.collect()
    rss_before = _rss_mb()
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    info = {"factory": factory, "train_s": 0.0, "train_size": 0}
    ivf = faiss.try_extract_index_ivf(index)
    hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
    if hnsw is not None:
        hnsw.efConstruction = args.ef_construction
        info["ef_construction"] = args.ef_construction
    if not index.is_trained:
        size = min(len(gallery), args.train_per_list * ivf.nlist) if ivf is not None else len(gallery)
        check_factory(factory, dim, size)  # clear error naming the factory when the sample is too small
        if ivf is not None:
            ivf.cp.niter = args.kmeans_iter
        log.info("%s: training on %d vectors (%d k-means iterations)", factory, size, args.kmeans_iter)
        start = time.perf_counter()
        index.train(gallery[:size])  # the gallery is in random order: its head is a random sample
        info.update(train_s=time.perf_counter() - start, train_size=size, kmeans_iter=args.kmeans_iter)
    start = time.perf_counter()
    for lo in range(0, len(gallery), args.add_chunk):
        index.add(gallery[lo:lo + args.add_chunk])
        done = min(lo + args.add_chunk, len(gallery))
        elapsed = time.perf_counter() - start
        log.info("%s: added %d / %d (%.0f s, about %.0f s left)", factory, done, len(gallery), elapsed,
                 elapsed / done * (len(gallery) - done))
    info["add_s"] = time.perf_counter() - start
    info["build_s"] = info["train_s"] + info["add_s"]
    gc.collect()
    info["rss_growth_mb"] = _rss_mb() - rss_before
    info["size_mb"] = index_bytes(index) / 2**20
    return index, info


def _measure(index: faiss.Index, queries: np.ndarray, exact: np.ndarray | None, args, **knobs):
    """(row of timings and recall@10 against ``exact`` ids (None: this is the exact index), scores, ids)."""
    set_search_params(index, **knobs)
    batch_s, (scores, ids) = _median_seconds(lambda: search(index, queries, K), budget_s=args.batch_budget)
    single_ms, single_n = _single_query_ms(index, queries, args.single, args.single_budget)
    row = {"batch_ms_per_query": batch_s * 1000 / len(queries), "batch_s": batch_s,
           "single_query_ms": single_ms, "single_queries": single_n,
           "recall_at_10": 1.0 if exact is None else recall_at_k(exact, ids)}
    log.info("  %s: %.3f ms/query in a batch, %.2f ms single, recall@10 %.4f",
             ", ".join(f"{k}={v}" for k, v in knobs.items()) or "exact", row["batch_ms_per_query"],
             single_ms, row["recall_at_10"])
    return {**knobs, **row}, scores, ids


def run(args) -> dict:
    start = time.perf_counter()
    log.info("drawing %d + %d vectors of dim %d around %d clusters (%d super-clusters)", args.n, args.queries,
             args.dim, args.clusters, args.superclusters)
    gallery, queries = clustered_gallery(args.n, args.queries, args.dim, args.clusters, args.superclusters,
                                         args.centre_spread, args.spread, args.rank, args.noise, args.seed)
    rows = []
    index, info = _build("Flat", gallery, args)
    measured, exact_scores, exact = _measure(index, queries, None, args)
    rows.append({**info, **measured})
    del index
    if args.ivf:
        index, info = _build(args.ivf, gallery, args)
        for nprobe in args.nprobe:
            rows.append({**info, **_measure(index, queries, exact, args, nprobe=nprobe)[0]})
        del index
    if args.hnsw:
        index, info = _build(args.hnsw, gallery, args)
        for ef in args.ef_search:
            rows.append({**info, **_measure(index, queries, exact, args, ef_search=ef)[0]})
        del index
    gc.collect()
    return {"benchmark": "index", **header(), "args": vars(args), "k": K, "faiss_threads": faiss.omp_get_max_threads(),
            "exact_top1_score": float(exact_scores[:, 0].mean()), "exact_top10_score": float(exact_scores[:, -1].mean()),
            "rows": rows, "seconds": time.perf_counter() - start}


def markdown(res: dict) -> str:
    a = res["args"]
    lines = [f"Top-{K} search on {a['n']:,} × {a['dim']} clustered unit vectors ({a['clusters']:,} clusters in "
             f"{a['superclusters']:,} super-clusters), {a['queries']:,} queries, {res['faiss_threads']} FAISS threads; "
             f"{machine_line(res)}", "",
             f"Exact mean similarity of the 1st / 10th neighbour: {res['exact_top1_score']:.3f} / "
             f"{res['exact_top10_score']:.3f}. Recall@10 = fraction of the exact top-10 found.", "",
             "| index | setting | build s (train + add) | size MB | ms/query (batch) | ms (single query) | recall@10 |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in res["rows"]:
        setting = f"nprobe={r['nprobe']}" if "nprobe" in r else f"efSearch={r['ef_search']}" if "ef_search" in r \
            else "exact"
        lines.append(f"| {r['factory']} | {setting} | {r['build_s']:.1f} ({r['train_s']:.1f} + {r['add_s']:.1f}) | "
                     f"{r['size_mb']:.0f} | {r['batch_ms_per_query']:.3f} | {r['single_query_ms']:.2f} | "
                     f"{r['recall_at_10']:.4f} |")
    lines += ["", f"Total {res['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000, help="gallery size")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--clusters", type=int, default=20_000, help="cluster centres (about N / clusters per cluster)")
    p.add_argument("--superclusters", type=int, default=1000, help="groups of cluster centres")
    p.add_argument("--centre-spread", type=float, default=1.0, help="noise norm of a centre around its super-centre")
    p.add_argument("--spread", type=float, default=1.0, help="norm of a point's variation around its centre, "
                                                             "inside the shared low-rank subspace")
    p.add_argument("--rank", type=int, default=32, help="dimension of that subspace (the data's intrinsic dimension)")
    p.add_argument("--noise", type=float, default=0.3, help="norm of the isotropic noise on every point")
    p.add_argument("--ivf", default="IVF4096,Flat", help="IVF factory string ('' to skip)")
    p.add_argument("--nprobe", type=_ints, default=[1, 4, 16, 64], help="IVF lists visited, comma-separated")
    p.add_argument("--hnsw", default="HNSW32", help="HNSW factory string ('' to skip)")
    p.add_argument("--ef-search", type=_ints, default=[16, 32, 64, 128, 256],
                   help="HNSW efSearch, comma-separated")
    p.add_argument("--ef-construction", type=int, default=40, help="HNSW candidate list while building (FAISS: 40)")
    p.add_argument("--train-per-list", type=int, default=50, help="IVF k-means training vectors per list")
    p.add_argument("--kmeans-iter", type=int, default=10)
    p.add_argument("--add-chunk", type=int, default=100_000, help="vectors added per logged step")
    p.add_argument("--single", type=int, default=50, help="single-query searches timed (at most)")
    p.add_argument("--single-budget", type=float, default=5.0, help="seconds spent on single queries (at least 3)")
    p.add_argument("--batch-budget", type=float, default=2.0, help="seconds spent repeating a batch search")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    res = run(args)
    text = markdown(res)
    print(text)
    write_results(args.out, "index", res, text)
    return res


if __name__ == "__main__":
    main()
