"""Decoding image files into RGB PIL images, and checking many files for decodability.

Every failure is an :class:`ImageError` naming the file, so a bad image stops a run with a
message instead of a crash deep inside a data-loader worker. Pillow's decompression-bomb
guard (``Image.MAX_IMAGE_PIXELS``) is left on.
"""
from __future__ import annotations

import io
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError
from ..progress import progress

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted; hidden files and folders and other extensions skipped)."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _check_file(path: str) -> None:
    if not os.path.isfile(path):
        raise ImageError(f"{path}: file not found")
    if os.path.getsize(path) == 0:
        raise ImageError(f"{path}: empty file (0 bytes)")


def _decode(source, name: str, draft: tuple[int, int] | None = None, max_pixels: int | None = None) -> Image.Image:
    """Fully decode ``source`` (a path or a binary file object); Pillow's errors become ImageError naming ``name``."""
    try:
        with warnings.catch_warnings():
            # Above MAX_IMAGE_PIXELS Pillow only warns; make that an error as well (bomb guard).
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                if max_pixels is not None and img.size[0] * img.size[1] > max_pixels:
                    raise ImageError(f"{name}: {img.size[0]}×{img.size[1]} pixels is more than the {max_pixels:,} "
                                     "allowed (decompression-bomb guard)")
                if draft is not None and img.format == "JPEG":
                    img.draft("RGB", draft)  # decode at a reduced scale: verifying needs no full size
                img.load()
                return ImageOps.exif_transpose(img)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image (Pillow cannot identify the format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"{name}: refused by Pillow's decompression-bomb guard: {err}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(f"{name}: truncated or corrupt image ({err})") from None


def _open(path: str, draft: tuple[int, int] | None = None) -> Image.Image:
    """Open and fully decode ``path``; Pillow's errors become ImageError naming the file."""
    _check_file(path)
    return _decode(path, path, draft)


def decode_image(data: bytes, name: str = "upload", max_pixels: int | None = None) -> Image.Image:
    """Decode image bytes (an upload) to RGB with the same guards as ``load_image``, plus an optional pixel cap.

    ImageError naming ``name`` for empty, truncated, non-image or too large input.
    """
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)")
    return _to_rgb(_decode(io.BytesIO(data), name, max_pixels=max_pixels))


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer or float grey → 8-bit L (Pillow's convert would clip at 255)."""
    arr = np.asarray(img)
    if arr.dtype.kind == "f":
        scale = 255.0 if float(np.nanmax(arr, initial=0)) <= 1.0 else 1.0
        out = np.nan_to_num(arr.astype(np.float64) * scale)
    elif img.mode.startswith("I;16") or int(arr.max(initial=0)) > 255:
        out = arr.astype(np.float64) / 257.0  # 65535 → 255
    else:
        out = arr
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), mode="L")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode → RGB; transparency is composited over white rather than dropped to black."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return _high_bit_depth_to_l(img).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def load_image(path: str | Path) -> Image.Image:
    """Decode ``path`` to an RGB PIL image with EXIF orientation applied.

    Grey, palette, RGBA, CMYK and 16-bit images become 8-bit RGB. Raises ImageError naming
    the file when it is missing, empty, truncated, not an image, or a decompression bomb.
    """
    path = str(path)
    return _to_rgb(_open(path))


def eval_array(img: Image.Image, size: int, mean, std) -> np.ndarray:
    """The test transform with Pillow and numpy, no torch: (3, size, size) float32.

    What ``build_transforms(cfg, train=False)`` does — torchvision's ``Resize`` on a PIL image is
    Pillow's bilinear resize, ``ToTensor`` scales to [0, 1], ``Normalize`` subtracts ``mean`` and
    divides by ``std`` per channel — for callers that must not run PyTorch operators (the cached
    ONNX model; the service's request threads, see ``serve/batcher.py``).
    """
    pixels = np.asarray(img.resize((size, size), Image.BILINEAR), np.float32).transpose(2, 0, 1) / np.float32(255)
    return (pixels - np.asarray(mean, np.float32).reshape(3, 1, 1)) / np.asarray(std, np.float32).reshape(3, 1, 1)


def check_image(path: str | Path) -> str | None:
    """None when ``path`` decodes, else the reason it does not (decoded at reduced scale for speed)."""
    path = str(path)
    try:
        _to_rgb(_open(path, draft=(64, 64)))
    except ImageError as err:
        return str(err).removeprefix(f"{path}: ")
    return None


def verify_images(paths: Iterable[str | Path], num_workers: int = 4) -> list[tuple[str, str]]:
    """Decode every file; return ``(path, reason)`` for each bad one, in input order.

    Threads suffice: Pillow releases the GIL while decoding.
    """
    paths = [str(p) for p in paths]
    bad: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        reasons = pool.map(check_image, paths, chunksize=64)
        for path, reason in progress(zip(paths, reasons), total=len(paths), desc="verify images", unit="img"):
            if reason is not None:
                bad.append((path, reason))
    log.info("verified %d images: %d bad", len(paths), len(bad))
    return bad
