"""How the network runs (retrieval.execution): ONNX Runtime and torch.compile give the eager embeddings."""
import logging

import numpy as np
import pytest
import torch

from retrieval.config import ModelConfig
from retrieval.embed import Embedder
from retrieval.errors import ConfigError, DataError
from retrieval.execution import CompiledOrEager
from retrieval.models import build_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = build_model(ModelConfig(backbone="resnet18", embedding_dim=32, descriptors="SG"), 4,
                      load_weights=False)
    with torch.no_grad():  # trained-looking: non-trivial BN statistics and attention
        for name, p in net.named_parameters():
            if ".cbam." in name:
                p.add_(torch.randn_like(p) * 0.1)
        net.train()(torch.randn(8, 3, 32, 32))
    return net.eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _eager(model, x):
    return Embedder(model, "cpu", "fp32", channels_last=False).embed(x).numpy()


def test_onnxruntime_gives_the_eager_embeddings(model, images):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    embedder = Embedder(model, "cpu", "auto", runtime="onnxruntime")
    assert embedder.dtype is None  # ONNX Runtime runs fp32 whatever the CPU
    got, want = embedder.embed(images).numpy(), _eager(model, images)
    cosines = (got * want).sum(axis=1)
    assert cosines.min() >= 0.9999, cosines  # the parity bar, per embedding
    assert np.abs(got - want).max() < 1e-4
    assert embedder.embed(images[:2]).shape == (2, 32)  # another batch size reuses the session
    assert len(embedder._run.sessions) == 1


def test_onnxruntime_refuses_what_it_cannot_run(model):
    with pytest.raises(ConfigError, match="--precision bf16"):
        Embedder(model, "cpu", "bf16", runtime="onnxruntime")
    with pytest.raises(ConfigError, match="--runtime: 'tensorrt'"):
        Embedder(model, "cpu", runtime="tensorrt")
    with pytest.raises(ConfigError, match="--compile"):
        Embedder(model, "cpu", runtime="onnxruntime", compile="inductor")


def test_compiled_embedder_gives_the_eager_embeddings(model, images):
    # dynamo's graph capture with the eager backend: the wiring, without minutes of C++ compilation
    # (benchmarks/bench_embed_speed.py measures inductor itself)
    torch._dynamo.reset()
    embedder = Embedder(model, "cpu", "fp32", channels_last=False, compile="eager")
    np.testing.assert_allclose(embedder.embed(images).numpy(), _eager(model, images), atol=1e-5)
    assert embedder._run.failed is None


def test_a_failing_compiler_falls_back_with_one_warning(model, images, caplog):
    wrapped = CompiledOrEager(model, backend="eager")

    def broken(*args):
        raise RuntimeError("no C++ compiler found\nmore detail")

    wrapped.compiled = broken
    with caplog.at_level(logging.WARNING), torch.no_grad():
        out = wrapped(images)
        wrapped(images)
    np.testing.assert_allclose(out.numpy(), _eager(model, images), atol=1e-5)
    warnings = [r for r in caplog.records if "torch.compile" in r.getMessage()]
    assert len(warnings) == 1 and "RuntimeError: no C++ compiler found" in warnings[0].getMessage()


def test_our_own_errors_are_not_taken_for_compiler_failures(model):
    wrapped = CompiledOrEager(model, backend="eager")

    def refuses(*args):
        raise DataError("images: expected (B, 3, H, W)")

    wrapped.compiled = refuses
    with pytest.raises(DataError):
        wrapped(torch.zeros(1, 3, 8, 8))
    assert wrapped.failed is None
