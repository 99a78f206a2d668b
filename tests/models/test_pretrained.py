"""Weight loading from torchvision-format state dicts and the torch hub cache; never downloads."""
import functools
import urllib.error

import pytest
import torch
import torchvision

from retrieval.config import ModelConfig
from retrieval.errors import CheckpointError
from retrieval.models import CBAM, ResNetBackbone, build_model, load_pretrained
from retrieval.models.pretrained import imagenet_cache_file


@pytest.fixture(scope="module")
def tv18():
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    with torch.no_grad():  # non-default BN statistics, so loading them is visible
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture
def weights_file(tmp_path, tv18):
    path = tmp_path / "resnet18_random.pth"
    torch.save(tv18.state_dict(), path)
    return path


@pytest.fixture
def no_download(monkeypatch, tmp_path):
    """An empty torch hub folder and a download function that fails as offline machines do."""
    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def _torchvision_features(model: torchvision.models.ResNet, x: torch.Tensor) -> torch.Tensor:
    return torch.nn.Sequential(*list(model.children())[:-2])(x)


def test_path_loads_every_resnet_key_and_reports_cbam_as_missing(weights_file, tv18):
    backbone = ResNetBackbone("resnet18", functools.partial(CBAM, init="identity"))
    report = load_pretrained(backbone, str(weights_file))
    # BatchNorm fills a missing num_batches_tracked itself, so torch does not report it
    n_cbam = sum(".cbam." in k and not k.endswith("num_batches_tracked") for k in backbone.state_dict())
    assert n_cbam > 0 and len(report.missing) == n_cbam and all(".cbam." in k for k in report.missing)
    assert sorted(report.unexpected) == ["fc.bias", "fc.weight"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():  # identity start: the loaded network computes torchvision's features exactly
        assert torch.equal(backbone.eval()(x), _torchvision_features(tv18, x))


def test_build_model_with_path_uses_identity_start(weights_file, tv18):
    cfg = ModelConfig(backbone="resnet18", pretrained=str(weights_file), last_stride=2)  # torchvision's strides
    model = build_model(cfg, 0).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.backbone(x), _torchvision_features(tv18, x))


def test_wrapped_and_ddp_prefixed_state_dicts_load(tmp_path, tv18):
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tv18.state_dict().items()}}, path)
    backbone = ResNetBackbone("resnet18")
    assert load_pretrained(backbone, str(path)).missing == []
    torch.testing.assert_close(backbone.conv1.weight, tv18.conv1.weight)


def test_load_weights_false_skips_pretrained(tmp_path, monkeypatch):
    from retrieval.models import net

    calls = []
    monkeypatch.setattr(net, "load_pretrained", lambda backbone, source: calls.append((backbone, source)))
    cfg = ModelConfig(backbone="resnet18", pretrained=str(tmp_path / "absent.pth"))
    build_model(cfg, 0, load_weights=False)  # the absent file is never looked at
    assert calls == []
    model = build_model(cfg, 0)  # the control: by default the backbone's weights are loaded from cfg.pretrained
    assert len(calls) == 1 and calls[0][0] is model.backbone and calls[0][1] == cfg.pretrained


@pytest.mark.parametrize("case,word", [
    ("absent", "not found"), ("garbage", "not a readable"), ("other_arch", "shapes do not fit"),
    ("partial", "keys missing"), ("not_dict", "torchvision-format"),
])
def test_files_that_do_not_fit_are_clear_errors(tmp_path, tv18, case, word):
    path = tmp_path / f"{case}.pth"
    state = tv18.state_dict()
    if case == "garbage":
        path.write_bytes(b"not a torch file")
    elif case == "other_arch":
        torch.save(state, path)
    elif case == "partial":
        torch.save({k: v for k, v in state.items() if not k.startswith("layer4")}, path)
    elif case == "not_dict":
        torch.save([1, 2, 3], path)
    arch = "resnet50" if case == "other_arch" else "resnet18"
    with pytest.raises(CheckpointError, match=word):
        load_pretrained(ResNetBackbone(arch), str(path))


def test_imagenet_offline_says_which_file_to_place_where(no_download):
    expected = imagenet_cache_file("resnet50")
    assert expected.name == "resnet50-0676ba61.pth" and expected.parent == no_download / "checkpoints"
    with pytest.raises(CheckpointError) as err:
        build_model(ModelConfig(backbone="resnet50", pretrained="imagenet"), 0)
    message = str(err.value)
    assert "resnet50-0676ba61.pth" in message and str(no_download / "checkpoints") in message
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in message


def test_imagenet_from_the_hub_cache_without_network(no_download, tv18):
    cached = imagenet_cache_file("resnet18")
    cached.parent.mkdir(parents=True)
    torch.save(tv18.state_dict(), cached)
    backbone = ResNetBackbone("resnet18", functools.partial(CBAM))
    report = load_pretrained(backbone, "imagenet")
    assert all(".cbam." in k for k in report.missing)
    torch.testing.assert_close(backbone.layer4[1].bn2.running_var, tv18.layer4[1].bn2.running_var)
