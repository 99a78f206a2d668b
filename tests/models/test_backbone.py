"""CBAM-ResNet against torchvision's plain ResNet: parameter counts, identity start, last stride."""
import functools

import pytest
import torch
import torchvision
from torch import nn

from retrieval.models import CBAM, ResNetBackbone, build_resnet
from retrieval.models.backbone import block_channels
from tests.models.nets import n_params, randomise_bn


def test_resnet50_parameter_counts_match_cbam_paper_table():
    # CBAM Table 4 (1000-class ImageNet classifier): ResNet-50 25.56M, ResNet-50 + CBAM 28.09M
    plain = n_params(build_resnet("resnet50"))
    cbam = n_params(build_resnet("resnet50", functools.partial(CBAM, reduction=16)))
    assert plain == n_params(torchvision.models.resnet50())  # it is torchvision's network
    assert abs(plain / 25.56e6 - 1) < 0.01
    assert abs(cbam / 28.09e6 - 1) < 0.01


def test_one_cbam_in_every_block_sized_to_its_output():
    model = build_resnet("resnet34", functools.partial(CBAM, reduction=16))
    blocks = [b for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for b in stage]
    assert len(blocks) == 3 + 4 + 6 + 3
    for blk in blocks:
        assert isinstance(blk.cbam, CBAM)
        assert blk.cbam.channel.mlp[0].in_features == block_channels(blk)


@pytest.mark.parametrize("arch,factory", [("resnet18", torchvision.models.resnet18),
                                          ("resnet50", torchvision.models.resnet50)])
def test_identity_init_computes_exactly_the_plain_torchvision_network(arch, factory):
    torch.manual_seed(0)
    reference = factory()
    randomise_bn(reference)
    ours = build_resnet(arch, functools.partial(CBAM, init="identity"))
    result = ours.load_state_dict(reference.state_dict(), strict=False)
    assert not result.unexpected_keys and all(".cbam." in k for k in result.missing_keys)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours.eval()(x), reference.eval()(x))
        assert torch.equal(ours.train()(x), reference.train()(x))  # batch statistics too
    paper = build_resnet(arch, functools.partial(CBAM, init="paper"))
    paper.load_state_dict(reference.state_dict(), strict=False)
    with torch.no_grad():  # the paper's start scales every residual branch down
        assert not torch.allclose(paper.eval()(x), reference.eval()(x), atol=1e-3)


def test_last_stride_1_gives_14x14_map_at_224():
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert ResNetBackbone("resnet18", last_stride=1).eval()(x).shape == (1, 512, 14, 14)
        assert ResNetBackbone("resnet18", last_stride=2).eval()(x).shape == (1, 512, 7, 7)


def test_last_stride_1_in_bottleneck_keeps_weight_shapes():
    s1 = ResNetBackbone("resnet50", functools.partial(CBAM), last_stride=1)
    s2 = ResNetBackbone("resnet50", functools.partial(CBAM), last_stride=2)
    assert {k: v.shape for k, v in s1.state_dict().items()} == {k: v.shape for k, v in s2.state_dict().items()}
    assert (s1.output_stride, s2.output_stride) == (16, 32)
    with torch.no_grad():
        assert s1.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 2048, 4, 4)


def test_backbone_keys_are_torchvision_keys_without_fc():
    ours = set(ResNetBackbone("resnet18", functools.partial(CBAM)).state_dict())
    tv = set(torchvision.models.resnet18().state_dict())
    assert {k for k in ours if ".cbam." not in k} == tv - {"fc.weight", "fc.bias"}


@pytest.mark.parametrize("kwargs,word", [(dict(arch="resnet152"), "resnet152"), (dict(arch="resnet18", last_stride=3), "last_stride")])
def test_bad_arguments_are_clear_errors(kwargs, word):
    with pytest.raises(ValueError, match=word):
        build_resnet(**kwargs)
