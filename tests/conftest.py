"""Shared fixtures: tiny real checkpoints and a tiny image gallery (commands, service)."""
import numpy as np
import pytest
import torch
from PIL import Image

from retrieval.checkpoint import save_checkpoint
from retrieval.config import Config, to_dict
from retrieval.models import build_model


def make_checkpoint(path, seed=0, embedding_dim=16):
    """A real (untrained) resnet18 + CGD checkpoint at 32 px."""
    cfg = Config()
    cfg.model.backbone, cfg.model.pretrained, cfg.model.embedding_dim = "resnet18", "none", embedding_dim
    cfg.data.image_size, cfg.data.resize, cfg.data.num_workers = 32, 36, 0
    cfg.eval.batch_size, cfg.eval.recall_k = 8, [1, 2]
    torch.manual_seed(seed)
    model = build_model(cfg.model, num_classes=3, load_weights=False)
    save_checkpoint(path, {"model": model.state_dict(), "config": to_dict(cfg), "num_classes": 3, "epoch": 1})
    return path


def make_gallery(root, classes=3, per_class=3, size=40, seed=0):
    """root/<class>/<i>.png: a class colour plus per-image noise, so every image embeds differently."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        colour = rng.integers(0, 256, 3)
        for i in range(per_class):
            pixels = np.clip(colour + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            (root / f"class{c}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def assets(tmp_path_factory):
    """Checkpoints ``ckpt`` / ``other`` (same dim, other weights) / ``narrow`` (dim 8), a gallery folder and CSV."""
    root = tmp_path_factory.mktemp("assets")
    gallery = make_gallery(root / "gallery")
    paths = sorted(gallery.rglob("*.png"))
    (root / "gallery.csv").write_text("path,label\n" + "".join(
        f"{p.relative_to(root)},{p.parent.name}\n" for p in paths))
    return {"root": root, "gallery": gallery, "csv": root / "gallery.csv", "paths": paths,
            "ckpt": make_checkpoint(root / "a.pt"), "other": make_checkpoint(root / "b.pt", seed=1),
            "narrow": make_checkpoint(root / "c.pt", embedding_dim=8)}


@pytest.fixture(scope="session", autouse=True)
def onnx_cache_in_tmp(tmp_path_factory):
    """Exported ONNX models go to a temporary cache (retrieval.onnx_cache), never the user's ~/.cache."""
    import os

    folder = tmp_path_factory.mktemp("onnx_cache")
    before = os.environ.get("RETRIEVAL_CACHE_DIR")
    os.environ["RETRIEVAL_CACHE_DIR"] = str(folder)  # subprocesses (the commands) inherit it
    yield folder
    if before is None:
        os.environ.pop("RETRIEVAL_CACHE_DIR", None)
    else:
        os.environ["RETRIEVAL_CACHE_DIR"] = before
