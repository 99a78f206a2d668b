"""Exported embedding paths give the eager model's embeddings, for a batch size other than the example's."""
import sys

import pytest
import torch

from retrieval.config import ModelConfig
from retrieval.models import build_model
from retrieval.models.export import export_onnx, export_torchscript, onnx_embed, parity, torchscript_embed


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = build_model(ModelConfig(backbone="resnet18", descriptors="SMG", embedding_dim=96, gem_learnable=True), 5)
    with torch.no_grad():  # a trained-looking network: non-trivial attention and BN statistics
        for name, p in net.named_parameters():
            if ".cbam." in name:
                p.add_(torch.randn_like(p) * 0.1)
        net.train()(torch.randn(8, 3, 64, 64))
    return net


def test_torchscript_parity(model, tmp_path):
    path = export_torchscript(model, tmp_path / "embed.pt", torch.randn(2, 3, 64, 64))
    assert model.training  # the caller's model is left as it was
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(torchscript_embed(path, x)), model.eval()(x), atol=1e-5, rtol=1e-5)
    model.train()


def test_onnx_parity_with_onnxruntime(model, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path = export_onnx(model, tmp_path / "embed.onnx", image_size=64)
    assert path.is_file() and not list(tmp_path.glob("*.tmp"))
    x = torch.randn(3, 3, 64, 64)
    out = onnx_embed(path, x)
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    model.train()
    assert out.shape == (3, 96)
    assert abs(out - ref).max() < 1e-4


def test_onnx_without_onnxscript_falls_back_to_the_legacy_exporter(model, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript → ImportError
    path = export_onnx(model, tmp_path / "legacy.onnx", image_size=64)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    model.train()
    assert abs(onnx_embed(path, x) - ref).max() < 1e-4


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_parity_is_small_for_a_faithful_export(model, tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    from retrieval.models.export import export

    path = export(model, tmp_path / f"embed.{fmt}", fmt, image_size=64)
    assert parity(model, path, fmt, image_size=64) < 1e-4
    assert model.training  # the caller's model is left as it was
