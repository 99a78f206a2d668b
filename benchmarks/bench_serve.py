"""retrieval-serve over loopback: latency against the forward pass, micro-batching gain, writes under load, RSS.

The server is the real process (``python -m retrieval.serve``) on 127.0.0.1 over an index
folder built here from real photographs (``--images``, default CUB_mini, first ``--gallery``
of them) with ``--checkpoint`` (default: an untrained checkpoint of the default config —
ResNet-50 at 224 px, 512-d — written into ``--out``: latency does not depend on training).

1. Latency: one JPEG → top-10 over HTTP (``POST /search``), alternating with the model's
   forward pass alone on the same image already transformed, in this process with the same
   torch thread count and precision. p50 / p99 of each; the goal is HTTP ≤ 1.3× forward.
   The HTTP request is sent by a minimal keep-alive client (``http.client``, the multipart body
   built once per image), so what is measured is the service, not the client library; the
   same search through httpx is timed beside it to show what a heavier client adds. A short
   pause separates the steps, so that neither process's idle OpenMP threads (which spin for a
   while after a forward pass) eat into the other's measurement. ``/search``'s
   ``Server-Timing`` gives the server's own forward pass and the stages around it.
2. Throughput: ``--clients`` concurrent clients against 1 client, alternating the two phases
   twice (noisy shared machines); the goal is ≥ 1.5× from micro-batching; zero errors.
3. Writes: adds and deletes interleaved with searches from 4 clients: zero errors, the final
   count equals initial + adds − deletes.
4. The server's resident memory (VmRSS, VmHWM) at the end.
5. The ceiling of (2) on this hardware: images/s of the forward pass alone at batch
   ``--clients`` over batch 1 (on a CPU whose threads a batch-1 pass already keeps busy it is
   near 1; on a GPU it is large).

With ``--screenshot PNG`` (needs playwright and Debian's chromium) the page is also driven
once — upload a query, top-K grid with CBAM attention — and captured for the README.

    python -m benchmarks.bench_serve                                  # ~10 min on 2 cores
    python -m benchmarks.bench_serve --gallery 200 --requests 20      # smoke size
"""
from __future__ import annotations

import argparse
import http.client
import importlib.util
import io
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import httpx
import numpy as np
import torch
from PIL import Image

from retrieval.checkpoint import save_checkpoint
from retrieval.config import Config, to_dict
from retrieval.data import table_from_folder
from retrieval.embed import open_embedder
from retrieval.gallery import build_gallery
from retrieval.models import build_model
from retrieval.serve.timing import parse_server_timing

from .common import header, machine_line, write_results

ROOT = Path(__file__).resolve().parents[1]
CUB_IMAGES = ROOT.parent / "shared" / "data" / "CUB_mini" / "images"


def default_checkpoint(path: Path, backbone: str, size: int, dim: int) -> Path:
    cfg = Config()
    cfg.model.pretrained, cfg.model.backbone, cfg.model.embedding_dim = "none", backbone, dim
    cfg.data.image_size, cfg.data.resize = size, size * 9 // 8
    model = build_model(cfg.model, num_classes=100, load_weights=False)
    save_checkpoint(path, {"model": model.state_dict(), "config": to_dict(cfg), "num_classes": 100, "epoch": 0})
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: Path, index: Path, threads: int, precision: str,
                 runtime: str = "torch", env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "retrieval.serve", "--checkpoint", str(checkpoint), "--index",
                             str(index), "--port", str(port), "--threads", str(threads), "--precision", precision,
                             "--runtime", runtime, "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"bench_serve: the server exited: {proc.stderr.read()}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("bench_serve: the server did not start within 120 s")


def uvicorn_http() -> str:
    """The HTTP parser uvicorn's "auto" picks in this environment (httptools when installed)."""
    return "httptools" if importlib.util.find_spec("httptools") else "h11"


def uvicorn_loop() -> str:
    """The event loop uvicorn's "auto" picks in this environment (uvloop when installed)."""
    return "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def search_once(client: httpx.Client, url: str, data: bytes, rerank: str | None = None) -> float:
    """Seconds of one image → top-10 over HTTP (httpx)."""
    start = time.perf_counter()
    params = {"k": 10, **({"rerank": rerank} if rerank else {})}
    response = client.post(url + "/search", params=params, files=[("images", ("q", data, "application/octet-stream"))])
    elapsed = time.perf_counter() - start
    if response.status_code != 200 or len(response.json()["queries"][0]["results"]) != 10:
        raise RuntimeError(f"search failed: {response.status_code} {response.text[:200]}")
    return elapsed


class RawClient:
    """One keep-alive connection sending ``POST /search`` with a prepared multipart body: the least
    a client can add, so that a latency measures the service."""

    BOUNDARY = "benchserveboundary7d1f"

    def __init__(self, url: str):
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)

    def body(self, data: bytes) -> bytes:
        return (f"--{self.BOUNDARY}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"q\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{self.BOUNDARY}--\r\n".encode()

    def search(self, body: bytes, stages: list[dict[str, float]] | None = None) -> float:
        """Seconds of one image → top-10; ``stages`` gets the server's Server-Timing."""
        start = time.perf_counter()
        self.conn.request("POST", "/search?" + urlencode({"k": 10}), body,
                          {"Content-Type": f"multipart/form-data; boundary={self.BOUNDARY}"})
        response = self.conn.getresponse()
        payload = response.read()
        elapsed = time.perf_counter() - start
        if response.status != 200 or b'"rank":10' not in payload:
            raise RuntimeError(f"search failed: {response.status} {payload[:200]!r}")
        if stages is not None:
            stages.append(parse_server_timing(response.getheader("server-timing", "")))
        return elapsed

    def close(self) -> None:
        self.conn.close()


PAUSE_S = 0.02  # between the alternating steps: idle OpenMP threads stop spinning (libgomp spins ~ms)


def latency(url: str, embedder, queries: list[bytes], repeats: int) -> dict:
    """HTTP one image → top-10 (a minimal client, and httpx), alternating with the forward pass alone on the same image."""
    http_raw, http_httpx, forward, stages = [], [], [], []
    raw = RawClient(url)
    bodies = [raw.body(q) for q in queries]
    with httpx.Client(timeout=60) as client:
        for i in range(repeats + 3):
            data = queries[i % len(queries)]
            tensor = embedder.transform(Image.open(io.BytesIO(data)).convert("RGB"))[None]
            h = raw.search(bodies[i % len(queries)], stages=stages if i >= 3 else None)
            time.sleep(PAUSE_S)
            start = time.perf_counter()
            embedder.embed(tensor)
            f = time.perf_counter() - start
            time.sleep(PAUSE_S)
            x = search_once(client, url, data)
            time.sleep(PAUSE_S)
            if i >= 3:  # warm-up
                http_raw.append(h)
                http_httpx.append(x)
                forward.append(f)
    raw.close()
    out = {"http_p50_ms": 1000 * percentile(http_raw, 50), "http_p99_ms": 1000 * percentile(http_raw, 99),
           "httpx_p50_ms": 1000 * percentile(http_httpx, 50), "httpx_p99_ms": 1000 * percentile(http_httpx, 99),
           "forward_p50_ms": 1000 * percentile(forward, 50), "forward_p99_ms": 1000 * percentile(forward, 99)}
    out["ratio_p50"] = out["http_p50_ms"] / out["forward_p50_ms"]
    out["ratio_p99"] = out["http_p99_ms"] / out["forward_p99_ms"]
    out["httpx_ratio_p50"] = out["httpx_p50_ms"] / out["forward_p50_ms"]
    # the server's own account (Server-Timing), and what lies outside it: HTTP, uvicorn, the client
    names = list(dict.fromkeys(name for entry in stages for name in entry))
    out["stages_p50_ms"] = {name: percentile([e.get(name, 0.0) for e in stages], 50) for name in names}
    out["stages_p50_ms"]["outside the handler"] = percentile(
        [1000 * h - sum(e.values()) for h, e in zip(http_raw, stages)], 50)
    # against the server's own forward pass (same process, same threads as the request's)
    out["ratio_server_forward_p50"] = out["http_p50_ms"] / out["stages_p50_ms"]["forward"]
    return out


def rerank_latency(url: str, queries: list[bytes], repeats: int, spec: str) -> dict:
    """HTTP one image → top-10 with re-ranking ``spec`` on, alternating with the same search without it."""
    plain, reranked = [], []
    with httpx.Client(timeout=60) as client:
        for i in range(repeats + 3):
            data = queries[i % len(queries)]
            p, r = search_once(client, url, data), search_once(client, url, data, spec)
            if i >= 3:  # warm-up
                plain.append(p)
                reranked.append(r)
    return {"rerank": spec, **{f"{name}_p{q}_ms": 1000 * percentile(values, q) for name, values in
                               (("plain", plain), ("reranked", reranked)) for q in (50, 99)}}


def batching_ceiling(embedder, queries: list[bytes], batch: int, repeats: int = 5) -> float:
    """Images/s of the forward pass at ``batch`` over images/s at batch 1: the most micro-batching can give here."""
    tensors = torch.stack([embedder.transform(Image.open(io.BytesIO(q)).convert("RGB")) for q in queries[:batch]])
    per_image = {}
    for size in (1, batch):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for i in range(0, batch, size):
                embedder.embed(tensors[i:i + size])
            times.append(time.perf_counter() - start)
        per_image[size] = statistics.median(times) / batch
    return per_image[1] / per_image[batch]


def throughput(url: str, queries: list[bytes], clients: int, requests: int) -> tuple[float, int]:
    """(requests per second, errors) of ``clients`` threads sending ``requests`` searches in all."""
    errors, lock, next_request = [0], threading.Lock(), [0]

    def worker():
        with httpx.Client(timeout=120) as client:
            while True:
                with lock:
                    i = next_request[0]
                    next_request[0] += 1
                if i >= requests:
                    return
                try:
                    search_once(client, url, queries[i % len(queries)])
                except (RuntimeError, httpx.HTTPError):
                    with lock:
                        errors[0] += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return requests / (time.perf_counter() - start), errors[0]


def writes_under_load(url: str, queries: list[bytes], adds: int) -> dict:
    """Adds and deletes from one writer while 4 clients search; errors and count consistency."""
    with httpx.Client(timeout=120) as client:
        initial = client.get(url + "/healthz").json()["count"]
    stop, search_errors, searches = threading.Event(), [0], [0]

    def searcher():
        with httpx.Client(timeout=120) as client:
            while not stop.is_set():
                try:
                    search_once(client, url, queries[searches[0] % len(queries)])
                    searches[0] += 1
                except (RuntimeError, httpx.HTTPError):
                    search_errors[0] += 1

    threads = [threading.Thread(target=searcher) for _ in range(4)]
    for t in threads:
        t.start()
    added, deleted, write_errors, rng = [], 0, 0, random.Random(0)
    with httpx.Client(timeout=120) as client:
        for i in range(adds):
            response = client.post(url + "/items", files=[("images", (f"n{i}", queries[i % len(queries)],
                                                                       "application/octet-stream"))], data={"labels": ["added"]})
            if response.status_code == 201:
                added += response.json()["ids"]
            else:
                write_errors += 1
            if i % 2 == 1:  # delete every other one again, a random earlier addition
                victim = added.pop(rng.randrange(len(added)))
                if client.delete(f"{url}/items/{victim}").status_code == 200:
                    deleted += 1
                else:
                    write_errors += 1
        stop.set()
        for t in threads:
            t.join()
        final = client.get(url + "/healthz").json()["count"]
    return {"initial": initial, "adds": adds, "deletes": deleted, "final": final,
            "consistent": final == initial + adds - deleted, "write_errors": write_errors,
            "searches": searches[0], "search_errors": search_errors[0]}


def rss_mb(pid: int) -> dict:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def screenshot(url: str, query: Path, png: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                    args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                          "--disable-background-networking", "--disable-component-update"])
        page = browser.new_page(viewport={"width": 1100, "height": 760})
        page.goto(url + "/")
        page.wait_for_selector("#gallery .tile")
        page.fill("#k", "10")
        page.set_input_files("#file", str(query))
        page.wait_for_function("document.querySelectorAll('#results .tile:not(.query)').length === 10")
        page.check("#attention")
        page.wait_for_function("document.querySelector('#results .tile.query img').src.startsWith('blob:')")
        page.wait_for_timeout(1500)
        png.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(png))
        browser.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="checkpoint to serve (default: untrained default config, 224 px)")
    p.add_argument("--backbone", default="resnet50", help="of the default checkpoint (default resnet50)")
    p.add_argument("--size", type=int, default=224, help="image size of the default checkpoint (default 224)")
    p.add_argument("--dim", type=int, default=1536, help="embedding dim of the default checkpoint (default 1536)")
    p.add_argument("--images", default=str(CUB_IMAGES), help="folder of photographs (default CUB_mini)")
    p.add_argument("--gallery", type=int, default=1000, help="gallery images (default 1000)")
    p.add_argument("--requests", type=int, default=100, help="searches per phase (default 100)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--adds", type=int, default=20, help="adds during the write phase (default 20)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--precision", default="auto")
    p.add_argument("--runtime", default="torch", help="the server's --runtime (and the forward pass it is compared "
                                                      "with): torch | onnxruntime | onnxruntime-int8")
    p.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment of the server process (repeatable), e.g. OMP_WAIT_POLICY=PASSIVE")
    p.add_argument("--rerank", help="also time searches with this re-ranking (NAME[:k=v,...]) against without")
    p.add_argument("--screenshot", help="also capture the page to this PNG (playwright + chromium)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve"))
    args = p.parse_args(argv)
    bad = [e for e in args.server_env if "=" not in e or not e.split("=", 1)[0]]
    if bad:
        p.error(f"--server-env {bad[0]!r}: expected KEY=VALUE")
    server_env = dict(e.split("=", 1) for e in args.server_env)

    if not Path(args.images).is_dir() or len(table_from_folder(args.images)) < 11:
        print(f"bench_serve: fewer than 11 images under {args.images}; skipped")
        return 0
    everything = table_from_folder(args.images, folder_labels=True)  # label = class folder
    # gallery: evenly spaced over the sorted images, so every class is in it; queries: 50 of the others
    chosen = np.unique(np.linspace(0, len(everything) - 1, min(args.gallery, len(everything))).astype(int))
    table = everything.iloc[chosen].reset_index(drop=True)
    others = everything.drop(index=everything.index[chosen])
    others = others if len(others) else everything
    photos = [Path(p) for p in others["path"].iloc[np.linspace(0, len(others) - 1, min(50, len(others))).astype(int)]]
    paths = list(table["path"])
    out = Path(args.out)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    torch.set_num_threads(args.threads)
    checkpoint = Path(args.checkpoint) if args.checkpoint else default_checkpoint(work / "untrained.pt", args.backbone,
                                                                                  args.size, args.dim)
    embedder = open_embedder(checkpoint, "cpu", workers=0, precision=args.precision, runtime=args.runtime)
    embedder.calibrate_on_table(table)  # onnxruntime-int8: the gallery's images, as the server calibrates
    build_gallery(embedder, embedder.embed_table(table), table, work / "index", source="bench_serve")
    queries = [p.read_bytes() for p in photos]  # not in the gallery when there are more photos than it holds
    dtype = embedder.dtype

    proc, url = start_server(checkpoint, work / "index", args.threads, args.precision, args.runtime, server_env)
    try:
        print(f"server at {url}, {len(paths)} images, {embedder.cfg.model.backbone} at {embedder.cfg.data.image_size} "
              f"px, {embedder.dim}-d, precision {dtype or 'fp32'}, {args.threads} threads", flush=True)
        lat = latency(url, embedder, queries, args.requests)
        print(f"latency: HTTP p50 {lat['http_p50_ms']:.1f} ms p99 {lat['http_p99_ms']:.1f} ms; forward p50 "
              f"{lat['forward_p50_ms']:.1f} ms p99 {lat['forward_p99_ms']:.1f} ms; ratio p50 {lat['ratio_p50']:.2f} "
              f"p99 {lat['ratio_p99']:.2f}; against the server's forward p50 {lat['ratio_server_forward_p50']:.2f}; "
              f"httpx p50 {lat['httpx_p50_ms']:.1f} ms; stages {lat['stages_p50_ms']}", flush=True)
        rerank = rerank_latency(url, queries, args.requests, args.rerank) if args.rerank else None
        if rerank:
            print(f"re-ranking {args.rerank}: {rerank}", flush=True)
        phases, errors = {1: [], args.clients: []}, 0
        for _ in range(2):
            for clients in (1, args.clients):
                rate, err = throughput(url, queries, clients, args.requests)
                phases[clients].append(rate)
                errors += err
                print(f"throughput {clients} client(s): {rate:.2f} req/s ({err} errors)", flush=True)
        stats_before = httpx.get(url + "/stats").json()
        ceiling = batching_ceiling(embedder, queries, args.clients)
        gain = statistics.median(phases[args.clients]) / statistics.median(phases[1])
        writes = writes_under_load(url, queries, args.adds)
        print(f"writes: {writes}", flush=True)
        memory = rss_mb(proc.pid)
        if args.screenshot:
            screenshot(url, photos[len(photos) // 2], Path(args.screenshot))
            print(f"screenshot → {args.screenshot}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    head = header()
    result = {**head, "gallery": len(paths), "backbone": embedder.cfg.model.backbone,
              "image_size": embedder.cfg.data.image_size, "dim": embedder.dim, "threads": args.threads,
              "precision": str(dtype or "fp32"), "runtime": args.runtime, "server_env": server_env,
              "http": {"http": uvicorn_http(), "loop": uvicorn_loop()}, "latency": lat, "rerank_latency": rerank,
              "throughput_req_s": phases,
              "batching_gain": gain, "forward_batch_gain": ceiling, "throughput_errors": errors, "writes": writes, "server_memory_mb": memory,
              "forward_batches": stats_before["forward_batches"], "images_embedded": stats_before["images_embedded"]}
    md = "\n".join([
        f"# retrieval-serve over loopback ({machine_line(head)})", "",
        f"Gallery: {len(paths)} photographs, {embedder.cfg.model.backbone} at {embedder.cfg.data.image_size} px, "
        f"{embedder.dim}-d Flat index, runtime {args.runtime}, precision {dtype or 'fp32'}, {args.threads} threads, "
        f"uvicorn {uvicorn_http()} + {uvicorn_loop()}{', server env ' + str(server_env) if server_env else ''}. "
        f"Command: `python -m benchmarks.bench_serve {' '.join(argv if argv is not None else sys.argv[1:])}`", "",
        "| measure | value | goal |", "|---|---|---|",
        f"| one image → top-10 over HTTP, p50 / p99 | {lat['http_p50_ms']:.1f} / {lat['http_p99_ms']:.1f} ms | |",
        f"| forward pass alone, p50 / p99 | {lat['forward_p50_ms']:.1f} / {lat['forward_p99_ms']:.1f} ms | |",
        f"| HTTP / forward, p50 / p99 | {lat['ratio_p50']:.2f}× / {lat['ratio_p99']:.2f}× | ≤ 1.3× |",
        f"| HTTP p50 / the server's own forward pass p50 (Server-Timing) | {lat['ratio_server_forward_p50']:.2f}× | |",
        f"| the same search sent with httpx, p50 / p99 (what a heavier client adds) | {lat['httpx_p50_ms']:.1f} / "
        f"{lat['httpx_p99_ms']:.1f} ms | |",
        "| where an HTTP search's time goes, p50 ms per stage (the server's Server-Timing) | "
        + ", ".join(f"{name} {ms:.1f}" for name, ms in lat["stages_p50_ms"].items()) + " | |",
        *([f"| with re-ranking `{rerank['rerank']}`: p50 / p99 (the same searches without it, alternating) | "
           f"{rerank['reranked_p50_ms']:.1f} / {rerank['reranked_p99_ms']:.1f} ms "
           f"({rerank['plain_p50_ms']:.1f} / {rerank['plain_p99_ms']:.1f} ms) | |"] if rerank else []),
        f"| throughput, 1 client (median of 2) | {statistics.median(phases[1]):.2f} req/s | |",
        f"| throughput, {args.clients} clients (median of 2) | {statistics.median(phases[args.clients]):.2f} req/s | |",
        f"| micro-batching gain ({args.clients} clients / 1) | {gain:.2f}× | ≥ 1.5× |",
        f"| the forward pass alone, batch {args.clients} vs batch 1, images/s (the ceiling of that gain here) | "
        f"{ceiling:.2f}× | |",
        f"| errors in the throughput phases | {errors} | 0 |",
        f"| adds / deletes during searches | {writes['adds']} / {writes['deletes']}, {writes['searches']} searches, "
        f"{writes['write_errors'] + writes['search_errors']} errors, count {writes['initial']} → {writes['final']} "
        f"({'consistent' if writes['consistent'] else 'INCONSISTENT'}) | 0 errors, consistent |",
        f"| server memory VmRSS / peak VmHWM | {memory.get('VmRSS', 0):.0f} / {memory.get('VmHWM', 0):.0f} MB | |",
        f"| forward passes / images embedded (batching) | {stats_before['forward_batches']} / "
        f"{stats_before['images_embedded']} | |", ""])
    write_results(out, "serve", result, md)
    shutil.rmtree(work, ignore_errors=True)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
