"""Procedural demo data: many classes of drawn "objects" whose identity survives resize, crop and flip.

A class is an object made of 2–4 parts; each part has a shape, a colour, a texture (solid,
stripes, dots, checker) and a place in the object's layout. Classes come in pairs with the
same colours (in another order, on other shapes and layouts), and the clutter behind the
object uses the same palette, so a colour histogram alone cannot tell classes apart.
An instance varies the pose (rotation), scale, position, background, clutter, occluders,
lighting and noise.

Written in the CSV format (``labels.csv``: path,label,split,mask; JPEG files under ``images/``)
with ``manifest.json`` holding the parameters, so the demo reads it through the same loader
as users' data. ``mask`` names a PNG under ``masks/`` (same relative name): the binary mask
(0 / 255) of the class-defining object as it is visible, without the clutter behind it and
with the pixels an occluder in front hides removed; the localisation score
(``retrieval.localisation``) measures attention maps against it. The first half of the
classes is train, the second half test. Every image (and mask) depends only on (seed, class,
instance): generation is deterministic and parallel.
"""
from __future__ import annotations

import io
import json
import logging
import math
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import DataError
from ..files import atomic_dir

log = logging.getLogger(__name__)

FORMAT = "retrieval-synthetic"
VERSION = 2  # 2: object masks (masks/, the CSV's mask column); version 1 folders are read without them

# Saturated, well separated colours (RGB); clutter and objects share them.
PALETTE = np.array([
    (220, 40, 40), (40, 170, 60), (40, 80, 220), (240, 210, 40), (210, 60, 200),
    (40, 200, 210), (245, 140, 30), (120, 60, 180), (235, 235, 235), (40, 40, 40),
], dtype=np.float32)
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross", "diamond", "ring", "half")
TEXTURES = ("solid", "stripes", "dots", "checker")


@dataclass(frozen=True)
class Part:
    shape: int  # index into SHAPES
    colour: int  # index into PALETTE
    texture: int  # index into TEXTURES
    dx: float  # centre in the object frame, in object diameters
    dy: float
    size: float  # radius in object diameters
    angle: float  # own rotation, radians
    stretch: float  # aspect ratio of the shape
    period: float  # texture period in object diameters


def class_parts(seed: int, label: int) -> list[Part]:
    """The parts of class ``label``; classes 2k and 2k+1 share their colours, nothing else."""
    pair = np.random.default_rng([seed, 1, label // 2])
    n = int(pair.integers(2, 5))
    colours = pair.choice(len(PALETTE) - 2, size=n, replace=False)  # black/white stay for clutter
    rng = np.random.default_rng([seed, 2, label])
    colours = rng.permutation(colours)
    # Parts sit on a ring around the centre so they do not hide each other completely.
    start = rng.uniform(0, 2 * math.pi)
    parts = []
    for i in range(n):
        theta = start + 2 * math.pi * i / n + rng.uniform(-0.4, 0.4)
        radius = rng.uniform(0.12, 0.3)
        parts.append(Part(
            shape=int(rng.integers(len(SHAPES))), colour=int(colours[i]), texture=int(rng.integers(len(TEXTURES))),
            dx=radius * math.cos(theta), dy=radius * math.sin(theta), size=rng.uniform(0.16, 0.26),
            angle=rng.uniform(0, 2 * math.pi), stretch=rng.uniform(0.6, 1.0), period=rng.uniform(0.06, 0.12)))
    return parts


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float, stretch: float) -> list[list[tuple]]:
    """Outline(s) of a shape; a second outline is a hole (ring)."""
    def regular(k: int, radii: tuple[float, ...] = (1.0,), phase: float = 0.0) -> list[tuple]:
        pts = []
        for i in range(k * len(radii)):
            a = phase + 2 * math.pi * i / (k * len(radii))
            rr = r * radii[i % len(radii)]
            x, y = rr * math.cos(a), rr * math.sin(a) * stretch
            pts.append((cx + x * math.cos(angle) - y * math.sin(angle), cy + x * math.sin(angle) + y * math.cos(angle)))
        return pts

    if shape == "circle":
        return [regular(20)]
    if shape == "square":
        return [regular(4, phase=math.pi / 4)]
    if shape == "triangle":
        return [regular(3)]
    if shape == "star":
        return [regular(5, (1.0, 0.42))]
    if shape == "hexagon":
        return [regular(6)]
    if shape == "diamond":
        return [regular(4, (1.0, 0.55))]
    if shape == "cross":
        return [regular(4, (1.0, 0.38, 0.38), phase=0.0)]
    if shape == "ring":
        return [regular(20), regular(20, (0.5,))]
    # half disc: a semicircle closed by its diameter
    pts = []
    for i in range(13):
        a = math.pi * i / 12
        x, y = r * math.cos(a), r * math.sin(a) * stretch
        pts.append((cx + x * math.cos(angle) - y * math.sin(angle), cy + x * math.sin(angle) + y * math.cos(angle)))
    return [pts]


def _texture(texture: str, h: int, w: int, x0: int, y0: int, cx: float, cy: float, angle: float,
             period: float) -> np.ndarray:
    """Boolean (h, w) pattern in the part's own frame, so the texture turns with the object."""
    if texture == "solid":
        return np.ones((h, w), dtype=bool)
    ys, xs = np.mgrid[y0:y0 + h, x0:x0 + w].astype(np.float32)
    u = (xs - cx) * math.cos(angle) + (ys - cy) * math.sin(angle)
    v = -(xs - cx) * math.sin(angle) + (ys - cy) * math.cos(angle)
    if texture == "stripes":
        return np.mod(u / period, 1.0) < 0.5
    if texture == "checker":
        return (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    du, dv = np.mod(u, period) - period / 2, np.mod(v, period) - period / 2  # dots
    return du * du + dv * dv > (0.3 * period) ** 2


def _paint(canvas: np.ndarray, shape: str, cx: float, cy: float, r: float, angle: float, stretch: float,
           colour: np.ndarray, texture: str = "solid", period: float = 1.0, cover: np.ndarray | None = None,
           covered: bool = True) -> None:
    """Draw one textured shape into ``canvas`` (H, W, 3) float32, only inside its bounding box.

    cover: a boolean (H, W) mask set to ``covered`` wherever the shape is drawn (object mask).
    """
    outlines = _polygon(shape, cx, cy, r, angle, stretch)
    xs = [p[0] for p in outlines[0]]
    ys = [p[1] for p in outlines[0]]
    size = canvas.shape[0]
    x0, y0 = max(0, int(min(xs))), max(0, int(min(ys)))
    x1, y1 = min(size, int(max(xs)) + 2), min(size, int(max(ys)) + 2)
    if x1 <= x0 or y1 <= y0:
        return
    mask_img = Image.new("L", (x1 - x0, y1 - y0), 0)
    draw = ImageDraw.Draw(mask_img)
    for k, outline in enumerate(outlines):
        draw.polygon([(x - x0, y - y0) for x, y in outline], fill=0 if k else 255)
    mask = np.asarray(mask_img) > 127
    pattern = _texture(texture, y1 - y0, x1 - x0, x0, y0, cx, cy, angle, period)
    region = canvas[y0:y1, x0:x1]
    region[mask & pattern] = colour
    region[mask & ~pattern] = colour * 0.45  # the texture's second tone: a dark shade of the same colour
    if cover is not None:
        cover[y0:y1, x0:x1][mask] = covered


def _clutter(canvas: np.ndarray, rng: np.random.Generator, count: int, lo: float, hi: float,
             cover: np.ndarray | None = None) -> None:
    """``count`` random shapes; with ``cover`` they are occluders and clear the object mask where drawn."""
    size = canvas.shape[0]
    for _ in range(count):
        _paint(canvas, SHAPES[rng.integers(len(SHAPES))], rng.uniform(0, size), rng.uniform(0, size),
               rng.uniform(lo, hi) * size, rng.uniform(0, 2 * math.pi), rng.uniform(0.5, 1.0),
               PALETTE[rng.integers(len(PALETTE))] * rng.uniform(0.7, 1.0), cover=cover, covered=False)


def render(seed: int, label: int, instance: int, size: int = 80) -> np.ndarray:
    """One image of class ``label``: (size, size, 3) uint8, a pure function of its arguments."""
    return render_with_mask(seed, label, instance, size)[0]


def render_with_mask(seed: int, label: int, instance: int, size: int = 80,
                     draw_object: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(image (size, size, 3) uint8, visible-object mask (size, size) bool) of one instance.

    draw_object=False draws the same image without the object (every random draw is the same),
    the background-only drawing the object mask can be checked against.
    """
    rng = np.random.default_rng([seed, 3, label, instance])
    big = 2 * size  # draw at twice the size, then downsample: anti-aliased edges for free
    # Background: a gradient between two muted colours.
    c0, c1 = (PALETTE[rng.integers(len(PALETTE), size=2)] * 0.5 + 60) * rng.uniform(0.6, 1.0, size=(2, 1))
    phi = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:big, 0:big].astype(np.float32) / big
    t = np.clip((xs - 0.5) * math.cos(phi) + (ys - 0.5) * math.sin(phi) + 0.5, 0, 1)[..., None]
    canvas = (c0 + (c1 - c0) * t).astype(np.float32)
    cover = np.zeros((big, big), dtype=bool)
    _clutter(canvas, rng, int(rng.integers(3, 9)), 0.05, 0.14)
    # The object: pose, scale and position of the whole layout.
    theta = rng.uniform(-math.pi / 4, math.pi / 4)
    scale = rng.uniform(0.55, 0.85) * big
    ox, oy = big / 2 + rng.uniform(-0.12, 0.12, size=2) * big
    cos, sin = math.cos(theta), math.sin(theta)
    for part in class_parts(seed, label):
        px = ox + (part.dx * cos - part.dy * sin) * scale
        py = oy + (part.dx * sin + part.dy * cos) * scale
        colour = np.clip(PALETTE[part.colour] + rng.normal(0, 12, size=3), 0, 255)
        if draw_object:
            _paint(canvas, SHAPES[part.shape], px, py, part.size * scale, part.angle + theta, part.stretch,
                   colour, TEXTURES[part.texture], part.period * scale, cover=cover)
    _clutter(canvas, rng, int(rng.integers(0, 3)), 0.04, 0.08, cover=cover)  # small occluders in front
    # Lighting: gain, colour cast, and a shading ramp.
    psi = rng.uniform(0, 2 * math.pi)
    ramp = 1 + rng.uniform(0, 0.3) * ((xs - 0.5) * math.cos(psi) + (ys - 0.5) * math.sin(psi))
    canvas = canvas * rng.uniform(0.7, 1.2) * ramp[..., None] + rng.uniform(-20, 20, size=3)
    small = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).resize((size, size), Image.BOX)
    noisy = np.asarray(small, dtype=np.float32) + rng.normal(0, rng.uniform(2, 8), size=(size, size, 3))
    # The mask at the image's size: a pixel is object when at least half its 2×2 drawing pixels are.
    visible = np.asarray(Image.fromarray(cover.astype(np.uint8) * 255).resize((size, size), Image.BOX)) >= 128
    return np.clip(noisy, 0, 255).astype(np.uint8), visible


def _render_class(args: tuple[int, int, int, int, str]) -> list[tuple[str, str]]:
    """Worker: write the JPEGs and mask PNGs of one class; return their paths relative to the root."""
    seed, label, per_class, size, folder = args
    rel = []
    for i in range(per_class):
        name, mask_name = f"images/{label:03d}/{i:03d}.jpg", f"masks/{label:03d}/{i:03d}.png"
        image, mask = render_with_mask(seed, label, i, size)
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=92)
        Path(folder, name).write_bytes(buf.getvalue())
        buf = io.BytesIO()
        Image.fromarray(mask.astype(np.uint8) * 255).save(buf, format="PNG")
        Path(folder, mask_name).write_bytes(buf.getvalue())
        rel.append((name, mask_name))
    return rel


def _manifest(num_classes: int, per_class: int, size: int, seed: int) -> dict:
    return {"format": FORMAT, "version": VERSION, "num_classes": num_classes, "per_class": per_class,
            "size": size, "seed": seed, "train_classes": [0, num_classes // 2 - 1],
            "test_classes": [num_classes // 2, num_classes - 1]}


def _existing(root: Path, wanted: dict) -> bool:
    """True when ``root`` already holds this data set; DataError when it holds something else."""
    if not root.exists():
        return False
    manifest = root / "manifest.json"
    if manifest.is_file():
        try:
            found = json.loads(manifest.read_text())
        except json.JSONDecodeError:
            found = None
        if found == wanted:
            return True
        if isinstance(found, dict) and found.get("version") == 1 and {**found, "version": VERSION} == wanted:
            log.warning("%s was generated by an earlier version, without object masks (the localisation score "
                        "needs them); delete the folder to generate it again with masks", root)
            return True
        raise DataError(f"{root} already holds a synthetic data set with other parameters ({found}); "
                        f"wanted {wanted}. Choose another data.root or delete {root}")
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()  # an empty folder: generate into its place
        return False
    raise DataError(f"{root} exists and is not a synthetic data set (no manifest.json); "
                    "choose another data.root")


def generate(root: str | Path, num_classes: int = 120, per_class: int = 24, size: int = 80, seed: int = 0,
             workers: int | None = None) -> Path:
    """Write the synthetic data set to ``root`` unless it is already there; return ``root``.

    Deterministic in (num_classes, per_class, size, seed), whatever ``workers`` (processes;
    default: up to 4 for large sets). A second call with the same parameters is a no-op; other
    parameters on an existing folder are a DataError.
    """
    if num_classes < 4 or num_classes % 2:
        raise DataError(f"synthetic: num_classes must be an even number >= 4, got {num_classes}")
    if per_class < 2 or size < 16:
        raise DataError(f"synthetic: need per_class >= 2 and size >= 16, got {per_class}, {size}")
    root = Path(root).expanduser()
    wanted = _manifest(num_classes, per_class, size, seed)
    if _existing(root, wanted):
        return root
    start = time.perf_counter()
    try:
        with atomic_dir(root) as tmp:
            _write(tmp, wanted, workers)
    except OSError:
        # Another process (e.g. a second DDP rank) finished first: fine if it wrote the same data.
        if _existing(root, wanted):
            return root
        raise
    log.info("synthetic: wrote %d images of %d classes to %s in %.1f s", num_classes * per_class,
             num_classes, root, time.perf_counter() - start)
    return root


def _write(folder: Path, manifest: dict, workers: int | None) -> None:
    num_classes, per_class = manifest["num_classes"], manifest["per_class"]
    for label in range(num_classes):
        (folder / "images" / f"{label:03d}").mkdir(parents=True)
        (folder / "masks" / f"{label:03d}").mkdir(parents=True)
    jobs = [(manifest["seed"], label, per_class, manifest["size"], str(folder)) for label in range(num_classes)]
    if workers is None:  # a pool pays off from a few hundred images on
        workers = min(4, os.cpu_count() or 1) if num_classes * per_class >= 256 else 1
    if workers > 1:
        with multiprocessing.get_context().Pool(workers) as pool:
            paths = pool.map(_render_class, jobs, chunksize=4)
    else:
        paths = [_render_class(job) for job in jobs]
    lines = ["path,label,split,mask"]
    for label, rel in enumerate(paths):
        split = "train" if label < num_classes // 2 else "test"
        lines += [f"{p},{label},{split},{m}" for p, m in rel]
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
