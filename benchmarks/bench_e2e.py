"""One image → top-10 end to end vs the model's forward alone, median over repeats.

End to end is the project's query path for one image file, with the model and the index
already loaded (as a service holds them): ``table_from_paths`` → ``Embedder.embed_table`` (data loader,
decode, test transform, inference-mode forward with bf16/channels_last where the CPU has
native bf16, L2 normalisation) → ``retrieval.index.search`` top-10 on an exact ``Flat``
index of N random unit vectors (an exact search costs the same whatever the vectors are).
"Forward alone" is the same model call on an already transformed (1, 3, S, S) tensor, in the
same precision and memory format. The two alternate over the repeats; decode, transform and
search are also timed alone so the overhead can be read stage by stage. The query image is a
JPEG written by the benchmark (smooth colours plus noise, ``--image-size``, CUB photos are
about 500 × 375). Full size, about 1 minute on 2 cores::

    python -m benchmarks.bench_e2e

Smoke size::

    python -m benchmarks.bench_e2e --backbone resnet18 --size 64 --dim 64 --gallery 2000 --repeats 3
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from retrieval.config import DataConfig, ModelConfig
from retrieval.data import build_transforms, load_image
from retrieval.data import table_from_paths
from retrieval.embed import Embedder
from retrieval.index import create_index, search
from retrieval.models import build_model
from retrieval.runtime import autocast, resolve_device

from .common import header, machine_line, write_results

K = 10


def write_query_image(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """A JPEG photo stand-in: smooth colour gradients plus pixel noise (pure noise would decode slower)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([np.sin(6 * xx + c) * np.cos(4 * yy - c) for c in rng.uniform(0, 3, 3)], axis=-1)
    pixels = np.clip(128 + 90 * base + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def random_gallery(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """(n, dim) float32 random unit vectors."""
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1000


def run(args) -> dict:
    device = resolve_device(args.device)
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=args.backbone, pretrained="none", embedding_dim=args.dim, descriptors=args.descriptors,
                      attention="none" if args.no_cbam else "cbam")
    transform = build_transforms(DataConfig(image_size=args.size), train=False)
    embedder = Embedder(build_model(cfg, num_classes=0, load_weights=False).eval(), device, args.precision,
                        batch_size=1, workers=0, transform=transform)  # placed once: device, channels_last
    model, dtype = embedder.model, embedder.dtype
    gallery = random_gallery(args.gallery, args.dim)
    index = create_index("Flat", gallery)
    index.add(gallery)
    del gallery

    with tempfile.TemporaryDirectory() as tmp:
        path = str(write_query_image(Path(tmp) / "query.jpg", *args.image_size))

        def end_to_end():
            table = table_from_paths([path])
            emb = embedder.embed_table(table, progress=False)
            return search(index, emb, K)

        image = transform(load_image(path)).unsqueeze(0).to(device).contiguous(memory_format=embedder.memory_format)

        def forward():
            with torch.inference_mode(), autocast(device, dtype):
                out = model(image)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return out

        pil = load_image(path)
        query = F.normalize(forward().float(), dim=1).cpu().numpy()
        stages = {"end to end": end_to_end, "forward alone": forward,
                  "decode (load_image)": lambda: load_image(path),
                  "transform": lambda: transform(pil),
                  f"search top-{K}": lambda: search(index, query, K)}
        for _ in range(args.warmup):
            for fn in stages.values():
                fn()
        times = {name: [] for name in stages}
        for _ in range(args.repeats):  # alternate, so machine noise hits every stage alike
            for name, fn in stages.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    ms = {name: _median_ms(t) for name, t in times.items()}
    return {"benchmark": "e2e", **header(), "args": vars(args), "device": str(device), "autocast": str(dtype),
            "median_ms": ms, "overhead_ratio": ms["end to end"] / ms["forward alone"]}


def markdown(res: dict) -> str:
    a = res["args"]
    lines = [f"One image → top-{K} ({a['backbone']}{'' if a['no_cbam'] else '+CBAM'}+CGD at {a['size']} px, "
             f"{a['dim']}-d, {res['autocast']} autocast; JPEG {a['image_size'][0]}×{a['image_size'][1]}; "
             f"Flat index of {a['gallery']:,} vectors; median of {a['repeats']}); {machine_line(res)}", "",
             "| step | median ms |", "| --- | --- |"]
    lines += [f"| {name} | {v:.1f} |" for name, v in res["median_ms"].items()]
    ms = res["median_ms"]
    rest = ms["end to end"] - sum(v for k, v in ms.items() if k != "end to end")
    lines += ["", f"End to end / forward alone = {res['overhead_ratio']:.2f}×; the rest of the end-to-end time "
              f"(table, data loader, normalisation; difference of medians) ≈ {rest:.1f} ms.", ""]
    return "\n".join(lines)


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.partition("x")
    return int(w), int(h or w)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--size", type=int, default=224, help="network input side (the test transform's resize)")
    p.add_argument("--dim", type=int, default=1536, help="embedding size (CGD: 1536)")
    p.add_argument("--descriptors", default="SG")
    p.add_argument("--no-cbam", action="store_true")
    p.add_argument("--gallery", type=int, default=100_000, help="vectors in the Flat index")
    p.add_argument("--image-size", type=_size, default=(500, 375), metavar="WxH", help="query JPEG size")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/bench")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    res = run(args)
    text = markdown(res)
    print(text)
    write_results(args.out, "e2e", res, text)
    return res


if __name__ == "__main__":
    main()
