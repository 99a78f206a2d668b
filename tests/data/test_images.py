"""load_image: EXIF orientation, every mode → RGB, each kind of bad file → ImageError naming it."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from retrieval.data.images import load_image, verify_images
from retrieval.errors import ImageError



def test_exif_orientation_applied(tmp_path):
    arr = np.zeros((10, 20, 3), dtype=np.uint8)
    arr[:, :10] = (255, 0, 0)
    arr[:, 10:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: the camera was turned; display rotated 90° clockwise
    path = tmp_path / "rotated.jpg"
    Image.fromarray(arr).save(path, exif=exif, quality=100)
    out = np.asarray(load_image(path)).astype(int)
    expected = np.rot90(arr, k=-1).astype(int)  # numpy reference: clockwise quarter turn
    assert out.shape == expected.shape == (20, 10, 3)
    assert np.abs(out - expected).mean() < 10


@pytest.mark.parametrize("make, expected", [
    (lambda: Image.new("CMYK", (8, 8), (0, 255, 255, 0)), (255, 0, 0)),  # pure red in CMYK
    (lambda: Image.new("L", (8, 8), 90), (90, 90, 90)),
    (lambda: Image.fromarray(np.full((8, 8), 32896, dtype=np.uint16)), (128, 128, 128)),  # 16-bit mid-grey
    (lambda: Image.new("RGBA", (8, 8), (0, 0, 0, 0)), (255, 255, 255)),  # transparent → white, not black
    (lambda: Image.new("RGBA", (8, 8), (10, 200, 30, 255)), (10, 200, 30)),
    (lambda: Image.new("RGB", (8, 8), (0, 128, 255)).convert("P", palette=Image.Palette.ADAPTIVE), (0, 128, 255)),
    (lambda: Image.new("1", (8, 8), 1), (255, 255, 255)),
])
def test_modes_become_rgb(tmp_path, make, expected):
    img = make()
    path = tmp_path / ("x.jpg" if img.mode == "CMYK" else "x.png")
    img.save(path)
    out = load_image(path)
    assert out.mode == "RGB"
    assert np.abs(np.asarray(out).astype(int) - expected).max() <= 3


def test_16bit_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    out = np.asarray(load_image(path))[..., 0].astype(int)
    np.testing.assert_allclose(out, ramp / 257.0, atol=1)


def _bad_files(tmp_path):
    zero = tmp_path / "zero.jpg"
    zero.write_bytes(b"")
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    full = tmp_path / "full.jpg"
    Image.fromarray(noise).save(full, quality=95)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(full.read_bytes()[: len(full.read_bytes()) * 6 // 10])
    text = tmp_path / "text.jpg"
    text.write_text("not an image at all\n")
    missing = tmp_path / "missing.jpg"
    return {"zero": zero, "truncated": truncated, "text": text, "missing": missing}


@pytest.mark.parametrize("kind, words", [("zero", "empty"), ("truncated", "truncated"), ("text", "not an image"),
                                         ("missing", "not found")])
def test_bad_file_is_image_error_naming_it(tmp_path, kind, words):
    path = _bad_files(tmp_path)[kind]
    with pytest.raises(ImageError) as err:
        load_image(path)
    assert str(path) in str(err.value) and words in str(err.value)


def test_decompression_bomb_guard_stays_on(tmp_path, monkeypatch, make_image):
    path = make_image(tmp_path / "big.png", size=(40, 40))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageError, match="decompression-bomb"):
        load_image(path)


def test_verify_lists_every_bad_file_in_order(tmp_path, make_image):
    bad = _bad_files(tmp_path)
    good = [make_image(tmp_path / f"ok{i}.jpg") for i in range(3)]
    paths = [good[0], bad["zero"], good[1], bad["truncated"], bad["text"], bad["missing"], good[2]]
    found = verify_images(paths, num_workers=2)
    assert [p for p, _ in found] == [str(bad[k]) for k in ("zero", "truncated", "text", "missing")]
    reasons = dict(found)
    assert "truncated" in reasons[str(bad["truncated"])] and "0 bytes" in reasons[str(bad["zero"])]
    assert not any(str(bad["zero"]) in r for r in reasons.values())  # the reason does not repeat the path


def test_palette_transparency_composited_on_white(tmp_path):
    img = Image.new("P", (8, 8), 0)
    img.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    img.putpixel((0, 0), 1)
    path = tmp_path / "p.png"
    img.save(path, transparency=0)
    out = np.asarray(load_image(path))
    assert tuple(out[0, 0]) == (200, 10, 10) and tuple(out[4, 4]) == (255, 255, 255)
