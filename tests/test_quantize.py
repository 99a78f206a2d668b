"""--runtime onnxruntime-int8 (retrieval.quantize): int8 embeddings near the fp32 ones, calibrated as documented."""
import numpy as np
import pytest
import torch

from retrieval.config import ModelConfig
from retrieval.embed import Embedder
from retrieval.errors import ConfigError
from retrieval.models import build_model
from retrieval.quantize import CALIBRATION_IMAGES, calibration_positions

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


class Images(torch.utils.data.Dataset):
    """Smooth generated images (blobs on a gradient): activation ranges like a photograph's, not white noise."""

    def __init__(self, count: int, size: int = 32, seed: int = 0):
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:size, 0:size] / size
        self.images = []
        for _ in range(count):
            cy, cx, r = rng.uniform(0.2, 0.8, 2).tolist() + [rng.uniform(0.1, 0.3)]
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
            colour, back = rng.uniform(-2, 2, (3, 1, 1)), rng.uniform(-1, 1, (3, 1, 1))
            self.images.append(torch.from_numpy((back * (1 - yy) + colour * blob).astype(np.float32)))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], 0


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = build_model(ModelConfig(backbone="resnet18", embedding_dim=32, descriptors="SG"), 4, load_weights=False)
    with torch.no_grad():  # trained-looking: non-trivial BN statistics and attention
        for name, p in net.named_parameters():
            if ".cbam." in name:
                p.add_(torch.randn_like(p) * 0.1)
        net.train()(torch.stack([Images(16, seed=5)[i][0] for i in range(16)]))
    return net.eval()


def test_calibration_images_are_spread_over_the_gallery():
    assert calibration_positions(10) == list(range(10))  # a small gallery is used whole
    spread = calibration_positions(1000)
    assert len(spread) == CALIBRATION_IMAGES and spread[0] == 0 and spread[-1] == 999
    steps = np.diff(spread)
    assert steps.min() >= 15 and steps.max() <= 16  # even steps, not the first 64 (one class of a sorted gallery)
    with pytest.raises(ConfigError, match="gallery is empty"):
        calibration_positions(0)


def test_int8_embeddings_are_near_the_fp32_ones_and_not_the_same(model):
    gallery, queries = Images(40, seed=1), Images(12, seed=2)
    batch = torch.stack([queries[i][0] for i in range(len(queries))])
    cache_as = ("quantize-test", {})  # the int8 embedder quantises the fp32 export stored by the first
    fp32 = Embedder(model, "cpu", "fp32", runtime="onnxruntime", cache_as=cache_as).embed(batch).numpy()
    int8 = Embedder(model, "cpu", "auto", runtime="onnxruntime-int8", cache_as=cache_as)
    assert int8.dtype is None
    int8.calibrate_on(gallery)
    assert len(int8._run.calibration) == 40
    got = int8.embed(batch).numpy()
    cosines = (got * fp32).sum(axis=1)
    # Measured on these images: min cosine 0.996 (AMD EPYC, AVX2). The bound leaves room for other CPUs' kernels
    # (int8 GEMMs differ between AVX2, AVX-512 VNNI and AMX) while failing a wrong quantisation
    # (a missing calibration or wrong ranges give cosines of 0.9 or less).
    assert cosines.min() >= 0.98, cosines
    assert np.abs(got - fp32).max() > 1e-4  # the int8 graph really runs: not the fp32 model again


def test_int8_needs_calibration_images_of_the_embedded_size(model):
    batch = torch.stack([Images(2)[i][0] for i in range(2)])
    embedder = Embedder(model, "cpu", runtime="onnxruntime-int8")
    with pytest.raises(ConfigError, match="no calibration images"):
        embedder.embed(batch)
    embedder.calibrate_on(Images(4, size=48))
    with pytest.raises(ConfigError, match=r"calibration images are \(48, 48\) px"):
        embedder.embed(batch)
    with pytest.raises(ConfigError, match="--precision bf16: --runtime onnxruntime-int8"):
        Embedder(model, "cpu", "bf16", runtime="onnxruntime-int8")
    with pytest.raises(ConfigError, match="--compile"):
        Embedder(model, "cpu", runtime="onnxruntime-int8", compile="inductor")
    torch_embedder = Embedder(model, "cpu", "fp32")
    torch_embedder.calibrate_on(Images(4))  # other runtimes ignore it
    assert not hasattr(torch_embedder._run, "calibration")
