"""Merging S IVF shards on disk (retrieval.index.merge_shards) against building the same index in one process.

What a sharded / ``torchrun`` build costs after the embedding: the gallery (N × dim unit
vectors, a Gaussian mixture) is written to ``gallery.npy`` and read memory-mapped; one
quantizer is trained on a sample (``--train-size``); then

- ``build``: S shards of N/S rows each, built one after the other (``build_shard``), as the
  ranks of a ``torchrun`` build do in parallel: seconds in all and the largest per-shard peak;
- ``merge``: ``merge_shards`` of the S shards into an index folder with on-disk lists (id
  coverage check, ``merge_ondisk``, metadata.parquet, manifest): seconds and peak memory;
- ``single``: the same trained quantizer, all N vectors loaded and added in one process, the
  folder written with an in-memory index and metadata.csv (what ``build_index.py`` does without
  ``torchrun``);
- ``exact``: what ``query.py --eval`` adds on such a gallery: ``--queries`` noisy copies of
  gallery rows through the merged on-disk index (``--nprobe``) and through ``exact_search``
  over the memory-mapped gallery: seconds and peak memory of each, and kNN-recall@10.

Each phase runs in its own process, so each peak is its own. Memory: peak VmHWM (resident set,
file-backed pages included) and, sampled every 20 ms, the peak of anonymous memory (RssAnon:
what the process must own) and of file-backed pages (RssFile: memory-mapped shards and lists,
which the kernel can drop); all in MB over the process's RSS before the phase.

Full size, 1M × 64 in 8 shards (about 2 minutes on 2 shared cores)::

    python -m benchmarks.bench_merge

Smoke size (seconds)::

    python -m benchmarks.bench_merge --n 20000 --dim 32 --shards 4 --factory IVF64,Flat --train-size 5000
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .common import header, machine_line, write_results

log = logging.getLogger("benchmarks.bench_merge")

PHASES = ("build", "merge", "single", "exact")


def _status_kb() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(rest.split()[0])
    return out


class PeakMemory:
    """Peak RSS (VmHWM, reset at start) and sampled peaks of RssAnon / RssFile, in MB over the values at start."""

    def __enter__(self) -> "PeakMemory":
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # reset VmHWM to the current RSS
        except OSError:
            pass
        self.before = _status_kb()
        self.peak = dict(self.before)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            for key, value in _status_kb().items():
                self.peak[key] = max(self.peak[key], value)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        for key, value in _status_kb().items():
            self.peak[key] = max(self.peak[key], value)

    def report(self) -> dict:
        mb = lambda kb: round(kb / 1024, 1)  # noqa: E731
        return {"peak_rss_mb": mb(self.peak["VmHWM"]), "extra_rss_mb": mb(self.peak["VmHWM"] - self.before["VmRSS"]),
                "extra_anon_mb": mb(self.peak["RssAnon"] - self.before["RssAnon"]),
                "extra_file_mb": mb(self.peak["RssFile"] - self.before["RssFile"])}


def write_gallery(path: Path, n: int, dim: int, clusters: int, seed: int, chunk: int = 100_000) -> None:
    """N × dim float32 unit vectors around ``clusters`` random centres, written in chunks (never all in RAM)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        block = centres[rng.integers(0, clusters, stop - start)] + rng.standard_normal((stop - start, dim),
                                                                                     dtype=np.float32)
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    out.flush()
    del out


def _metadata(n: int) -> pd.DataFrame:
    return pd.DataFrame({"path": [f"/gallery/{i:08d}.jpg" for i in range(n)], "label": np.arange(n) % 1000})


def _bounds(n: int, shards: int) -> list[tuple[int, int]]:
    return [(s * n // shards, (s + 1) * n // shards) for s in range(shards)]


def phase_shards(work: Path, args) -> dict:
    from retrieval.index import build_shard, train_empty_index

    x = np.load(work / "gallery.npy", mmap_mode="r")
    sample = np.sort(np.random.default_rng(0).choice(len(x), size=min(len(x), args.train_size), replace=False))
    start = time.perf_counter()
    train_empty_index(args.factory, np.asarray(x[sample]), work / "trained.faiss")
    train_s = time.perf_counter() - start
    per_shard = []
    for s, (lo, hi) in enumerate(_bounds(len(x), args.shards)):
        with PeakMemory() as mem:
            t = time.perf_counter()
            build_shard(work / "trained.faiss", np.asarray(x[lo:hi]), lo, work / f"shard{s:03d}.faiss")
            per_shard.append({"seconds": time.perf_counter() - t, **mem.report()})
    return {"train_s": round(train_s, 3), "train_size": len(sample),
            "seconds": round(sum(p["seconds"] for p in per_shard), 3),
            "max_shard_seconds": round(max(p["seconds"] for p in per_shard), 3),
            "max_shard_extra_rss_mb": max(p["extra_rss_mb"] for p in per_shard),
            "shard_bytes": sum((work / f"shard{s:03d}.faiss").stat().st_size for s in range(args.shards))}


def phase_merge(work: Path, args) -> dict:
    from retrieval.index import merge_shards

    meta = _metadata(args.n)  # built before the measurement: every build needs the table
    shards = [work / f"shard{s:03d}.faiss" for s in range(args.shards)]
    with PeakMemory() as mem:
        start = time.perf_counter()
        manifest = merge_shards(work / "trained.faiss", shards, meta, work / "merged", factory=args.factory)
        seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 3), **mem.report(), "count": manifest["count"],
            "ivfdata_bytes": manifest["ivfdata_bytes"]}


def phase_single(work: Path, args) -> dict:
    import faiss

    from retrieval.files import atomic_dir
    from retrieval.index import new_manifest, normalise_metadata
    from retrieval.index.folder import write_folder

    meta = _metadata(args.n)
    with PeakMemory() as mem:
        start = time.perf_counter()
        x = np.load(work / "gallery.npy")  # the single-process build holds the embeddings in RAM
        index = faiss.read_index(str(work / "trained.faiss"))
        index.add(x)
        with atomic_dir(work / "single") as tmp:
            write_folder(tmp, index, normalise_metadata(meta, index.ntotal), new_manifest(index, args.factory), None)
        seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 3), **mem.report(), "count": int(index.ntotal)}


def phase_exact(work: Path, args) -> dict:
    from retrieval.gallery import open_gallery
    from retrieval.index.exact import exact_search, knn_recall

    x = np.load(work / "gallery.npy", mmap_mode="r")
    rng = np.random.default_rng(1)
    q = np.asarray(x[np.sort(rng.choice(len(x), size=args.queries, replace=False))])
    q = q + 0.05 * rng.standard_normal(q.shape, dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    gallery = open_gallery(work / "merged")
    with PeakMemory() as index_mem:
        start = time.perf_counter()
        approx = gallery.search(q, 10, nprobe=args.nprobe)[1]
        index_s = time.perf_counter() - start
    with PeakMemory() as exact_mem:
        start = time.perf_counter()
        exact = exact_search(x, q, 10)[1]
        exact_s = time.perf_counter() - start
    return {"queries": args.queries, "nprobe": args.nprobe, "knn_recall@10": round(knn_recall(approx, exact, 10), 4),
            "index_s": round(index_s, 3), "index_extra_anon_mb": index_mem.report()["extra_anon_mb"],
            "exact_s": round(exact_s, 3), **{f"exact_{k}": v for k, v in exact_mem.report().items()}}


PHASE_FUNCTIONS = {"build": phase_shards, "merge": phase_merge, "single": phase_single, "exact": phase_exact}


def _run_phase(phase: str, work: Path, argv: list[str]) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_merge", "--phase", phase, "--work", str(work), *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if proc.returncode:
        raise RuntimeError(f"phase {phase} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads((work / f"{phase}.json").read_text())  # not stdout: FAISS prints there too


def run(args, argv: list[str]) -> dict:
    """Every phase in its own process on a fresh work folder; the folder is removed unless --keep."""
    work = Path(tempfile.mkdtemp(prefix="bench_merge.", dir=args.work_root))
    try:
        start = time.perf_counter()
        write_gallery(work / "gallery.npy", args.n, args.dim, args.clusters, args.seed)
        log.info("gallery %d x %d written in %.1f s", args.n, args.dim, time.perf_counter() - start)
        phases = {}
        for phase in PHASES:
            phases[phase] = PHASE_FUNCTIONS[phase](work, args) if args.in_process else _run_phase(phase, work, argv)
            log.info("%s: %s", phase, phases[phase])
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    gallery_mb = args.n * args.dim * 4 / 2**20
    return {**header(), "n": args.n, "dim": args.dim, "shards": args.shards, "factory": args.factory,
            "gallery_mb": round(gallery_mb, 1), **phases,
            "merge_vs_single_seconds": round(phases["merge"]["seconds"] / phases["single"]["seconds"], 2),
            "merge_anon_vs_gallery": round(phases["merge"]["extra_anon_mb"] / gallery_mb, 3)}


def markdown(res: dict) -> str:
    s, m, o = res["build"], res["merge"], res["single"]
    rows = [("build S shards (sequential here; one per rank under torchrun)", s["seconds"],
             f"{s['max_shard_extra_rss_mb']} (per shard)", "–", "–"),
            ("merge_shards (on-disk lists + metadata)", m["seconds"], m["extra_rss_mb"], m["extra_anon_mb"],
             m["extra_file_mb"]),
            ("single process: load + add + write", o["seconds"], o["extra_rss_mb"], o["extra_anon_mb"],
             o["extra_file_mb"])]
    lines = [f"Merging {res['shards']} shards of a {res['n']:,} × {res['dim']} gallery ({res['factory']}, "
             f"{res['gallery_mb']:,} MB of float32; quantizer trained on {s['train_size']:,} vectors in "
             f"{s['train_s']} s), {machine_line(res)}", "",
             "| step | seconds | extra peak RSS MB | extra anon MB | extra file-backed MB |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows]
    lines += ["", f"merge / single-process time: {res['merge_vs_single_seconds']}×; the merge's anonymous memory is "
                  f"{res['merge_anon_vs_gallery']}× the gallery's size."]
    e = res["exact"]
    lines += ["", f"Evaluation at scale: {e['queries']:,} queries through the merged on-disk index (nprobe "
                  f"{e['nprobe']}) in {e['index_s']} s, and by exact search over the memory-mapped gallery in "
                  f"{e['exact_s']} s ({e['exact_extra_anon_mb']} MB anonymous, {e['exact_extra_file_mb']} MB "
                  f"file-backed); kNN-recall@10 of the index {e['knn_recall@10']}."]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="gallery vectors (default 1M)")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--factory", default="IVF1024,Flat")
    p.add_argument("--train-size", type=int, default=65_536)
    p.add_argument("--clusters", type=int, default=2000)
    p.add_argument("--queries", type=int, default=1000, help="exact phase: queries searched both ways")
    p.add_argument("--nprobe", type=int, default=16, help="exact phase: lists the index visits per query")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-root", default=None, help="where the temporary work folder goes (default: the system's)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (gallery, shards, both indexes)")
    p.add_argument("--in-process", action="store_true",
                   help="run the phases in this process (quick; the peaks then include the earlier phases' memory)")
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)  # internal: one phase in this process
    p.add_argument("--work", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.phase:
        logging.basicConfig(level=logging.WARNING)
        result = PHASE_FUNCTIONS[args.phase](Path(args.work), args)
        (Path(args.work) / f"{args.phase}.json").write_text(json.dumps(result))
        return result
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    res = run(args, argv)
    text = markdown(res)
    print(text)
    write_results(args.out, "merge", res, text)
    return res


if __name__ == "__main__":
    main()
