"""Grad-CAM / attention-gate figure: map shapes and values, the written PNG, labels, models without gates."""
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from retrieval.config import Config
from retrieval.models import build_model
from retrieval.viz import attention, attention_figure, grad_cam


def tiny_config(**model) -> Config:
    cfg = Config()
    cfg.model.backbone, cfg.model.pretrained, cfg.model.embedding_dim = "resnet18", "none", 32
    for key, value in model.items():
        setattr(cfg.model, key, value)
    cfg.data.image_size, cfg.data.resize = 64, 72
    return cfg


def tiny_model(cfg: Config) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(cfg.model, num_classes=0, load_weights=False)
    if cfg.model.attention == "cbam":
        # At initialisation every spatial gate is exactly 0.5 (its BN weight starts at 0, as the
        # official code); give the BNs weight 1 so the maps have structure to draw.
        for stage in model.backbone.stages:
            for block in stage:
                torch.nn.init.ones_(block.cbam.spatial.bn.weight)
    return model.eval()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two 80×60 pictures: a bright square (the 'object') on a noisy dark background."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i, (x, y) in enumerate([(10, 10), (45, 25)]):
        pixels = rng.integers(0, 60, (60, 80, 3)).astype(np.uint8)
        pixels[y:y + 25, x:x + 25] = (230, 200, 40)
        paths.append(root / f"img{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def test_grad_cam_shape_range_and_no_side_effects():
    model = tiny_model(tiny_config())
    model.train()
    images = torch.randn(3, 3, 64, 64)
    cam = grad_cam(model, images)
    # last stage at stride 16 (model.last_stride=1): 64 / 16 = 4
    assert cam.shape == (3, 4, 4) and cam.dtype == torch.float32
    assert cam.min() >= 0 and torch.allclose(cam.flatten(1).amax(1), torch.ones(3))
    assert all(cam[i].std() > 0 for i in range(3))  # not a constant map
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())  # no gradients left on the weights


def test_grad_cam_matches_a_hand_written_reference():
    """Independent path: hook the backbone output and back-propagate from the images."""
    model = tiny_model(tiny_config(descriptors="MG"))
    images = torch.randn(2, 3, 48, 48)
    store = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        store["A"] = output

    handle = model.backbone.layer4.register_forward_hook(keep)
    features = model.backbone(images)
    handle.remove()
    pooled = [pool(features) for pool in model.head.pools]
    target = sum(fc(p).norm(dim=1).sum() for fc, p in zip(model.head.fcs, pooled))  # Σ_b ‖u_b‖
    target.backward()
    a, g = store["A"], store["A"].grad
    ref = F.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1)).detach()
    ref = ref / ref.flatten(1).amax(1)[:, None, None]
    torch.testing.assert_close(grad_cam(model, images), ref, atol=1e-4, rtol=1e-3)


def test_self_similarity_of_the_final_embedding_has_no_gradient():
    """Why the target is taken before the L2 normalisation (module docstring)."""
    model = tiny_model(tiny_config())
    feats = model.backbone(torch.randn(1, 3, 64, 64)).detach().requires_grad_(True)
    emb = model.head(feats)
    (grad,) = torch.autograd.grad((emb * emb.detach()).sum(), feats)
    assert grad.abs().max() < 1e-5


def test_figure_written(images, tmp_path):
    cfg = tiny_config()
    out = attention_figure(tiny_model(cfg), images, cfg, tmp_path / "pics" / "attention.png", display=96)
    assert out == tmp_path / "pics" / "attention.png"
    with Image.open(out) as picture:
        width, height = picture.size
        # 6 panels per row (input, Grad-CAM, 4 stages), 2 rows
        assert 900 <= width <= 1600 and 350 <= height <= 700
        pixels = np.asarray(picture.convert("RGB"))
    assert pixels.std() > 20  # something was drawn
    assert [p.name for p in out.parent.iterdir()] == ["attention.png"]  # no temp file left


@pytest.mark.parametrize("kind", ["none", "se"])
def test_models_without_spatial_attention_get_grad_cam_only(images, tmp_path, monkeypatch, kind):
    figures = []
    monkeypatch.setattr(attention, "save_figure", lambda fig, path: figures.append(fig) or path)
    cfg = tiny_config(attention=kind)
    attention_figure(tiny_model(cfg), images, cfg, tmp_path / "a.png", display=64)
    titles = [ax.get_title() for ax in figures[0].axes]
    assert len(titles) == 4 and titles[1].startswith(attention.GRAD_CAM_LABEL)
    assert attention.GATE_LABEL not in figures[0]._suptitle.get_text()


def test_bam_gates_are_drawn_and_labelled_as_gates(images, tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(attention, "save_figure", lambda fig, path: figures.append(fig) or path)
    cfg = tiny_config(attention="bam")
    attention_figure(tiny_model(cfg), images, cfg, tmp_path / "a.png", display=64)
    titles = [ax.get_title() for ax in figures[0].axes[:5]]
    assert titles[1].startswith(attention.GRAD_CAM_LABEL)
    assert [t.split(" (")[0] for t in titles[2:]] == [f"BAM after stage {i}" for i in (1, 2, 3)]
    assert attention.GATE_LABEL in figures[0]._suptitle.get_text()


def test_missing_matplotlib_names_the_package(images, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    cfg = tiny_config()
    with pytest.raises(ImportError, match="pip install matplotlib"):
        attention_figure(tiny_model(cfg), images, cfg, tmp_path / "a.png")


def test_panels_and_titles(images, tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(attention, "save_figure", lambda fig, path: figures.append(fig) or path)
    cfg = tiny_config()
    attention_figure(tiny_model(cfg), images, cfg, tmp_path / "a.png", display=64)
    axes = figures[0].axes
    assert len(axes) == 12
    titles = [ax.get_title() for ax in axes[:6]]
    # Grad-CAM first, named for what it shows; the gates named as gates (DESIGN.md "Attention and explanations")
    assert titles[0] == "input" and titles[1].startswith("where the embedding looks (Grad-CAM)\n4×4")
    assert titles[2].startswith("CBAM stage 1 (16×16)") and titles[5].startswith("CBAM stage 4 (4×4)")
    assert "gate on the residual branch (not where the network looks)" in figures[0]._suptitle.get_text()
    assert len(axes[2].get_images()) == 2  # image + overlay
