"""The assembled network: shapes for every backbone × descriptor, config switches, gradients, input checks."""
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from retrieval.config import ModelConfig
from retrieval.models import CBAM, CGDHead, ResNetBackbone, RetrievalNet, build_model, resolve_cbam_init
from retrieval.models.cbam import ChannelGate, SpatialGate

ARCHS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}
COMBOS = ["S", "M", "G", "SM", "SG", "MG", "SMG"]


def _cfg(**kw) -> ModelConfig:
    base = dict(backbone="resnet18", embedding_dim=48, descriptors="SG")
    return ModelConfig(**{**base, **kw})


@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_backbone_with_every_descriptor_combination(arch):
    torch.manual_seed(0)
    backbone = ResNetBackbone(arch, functools.partial(CBAM), last_stride=1).eval()
    assert backbone.out_channels == ARCHS[arch]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = backbone(x)
        for desc in COMBOS:
            net = RetrievalNet(backbone, CGDHead(ARCHS[arch], desc, embedding_dim=48, num_classes=3)).eval()
            emb = net.head(feats)
            assert emb.shape == (2, 48) and emb.dtype == torch.float32
            torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(net(x), emb)  # the full forward is backbone → head


def test_forward_train_is_one_pass_with_scaled_logits():
    model = build_model(_cfg(temperature=0.25), num_classes=7).eval()
    x = torch.randn(3, 3, 64, 64)
    emb, logits = model.forward_train(x)
    assert emb.shape == (3, 48) and logits.shape == (3, 7) and logits.dtype == torch.float32
    torch.testing.assert_close(emb, model(x))
    pooled = model.head.pools[0](model.backbone(x))
    torch.testing.assert_close(logits, model.head.classifier(pooled) / 0.25)
    assert (model.embedding_dim, model.num_classes) == (48, 7)


def test_no_classifier_with_zero_classes():
    model = build_model(_cfg(), num_classes=0)
    assert model.head.classifier is None and model.forward_train(torch.randn(2, 3, 32, 32))[1] is None


def test_config_switches_reach_the_modules():
    assert not any(isinstance(m, CBAM) for m in build_model(_cfg(attention="none"), 0).modules())
    model = build_model(_cfg(cbam_reduction=8, cbam_kernel=3, cbam_arrangement="parallel", cbam_pool="max",
                             attention="cbam", gem_learnable=True, last_stride=2), 0)
    cbam = model.backbone.layer2[0].cbam
    assert cbam.arrangement == "parallel" and cbam.channel.pools == ("max",)
    assert cbam.channel.mlp[0].out_features == 128 // 8 and cbam.spatial.conv.kernel_size == (3, 3)
    assert model.backbone.output_stride == 32 and model.head.pools[1].p.requires_grad
    assert build_model(_cfg(attention="se"), 0).backbone.layer1[0].cbam.spatial is None


@pytest.mark.parametrize("pretrained,init,expected", [
    ("none", "auto", "paper"), ("imagenet", "auto", "identity"), ("/some/weights.pth", "auto", "identity"),
    ("imagenet", "paper", "paper"), ("none", "identity", "identity"),
])
def test_cbam_init_auto_depends_on_config_only(pretrained, init, expected):
    cfg = _cfg(pretrained=pretrained, cbam_init=init)
    assert resolve_cbam_init(cfg) == expected
    model = build_model(cfg, 0, load_weights=False)  # nothing is read or downloaded
    gates = [m for m in model.modules() if isinstance(m, (ChannelGate, SpatialGate))]
    assert {g.scale for g in gates} == {2.0 if expected == "identity" else 1.0}
    assert (model.backbone.layer1[0].cbam.channel.mlp[2].weight.abs().sum() == 0) == (expected == "identity")


def test_state_dict_round_trip_rebuilds_the_same_network():
    cfg = _cfg(descriptors="SMG", gem_learnable=True)
    a, b = build_model(cfg, 4).eval(), build_model(cfg, 4, load_weights=False).eval()
    b.load_state_dict(a.state_dict())  # strict: the checkpoint contract
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(a(x), b(x))


def test_gradients_reach_every_parameter():
    model = build_model(_cfg(descriptors="SMG", gem_learnable=True), num_classes=4).train()
    with torch.no_grad():  # move zero-initialised tensors (BN γ of the spatial gates, biases) off zero
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    emb, logits = model.forward_train(x)
    ((emb * torch.randn_like(emb)).sum() + F.cross_entropy(logits, labels)).backward()
    dead = [n for n, p in model.named_parameters() if p.requires_grad and (
        p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0)]
    assert not dead
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen == [f"head.bns.{i}.bias" for i in range(3)]  # the centring BN's shift only (models/cgd.py)
    assert any(".cbam.spatial." in n for n, _ in model.named_parameters())
    assert model.head.pools[2].p.grad is not None and model.head.classifier[1].weight.grad is not None


@pytest.mark.parametrize("shape,word", [
    ((2, 1, 64, 64), "3 colour channels"), ((3, 64, 64), "4 dimensions"), ((2, 3, 16, 64), "H, W >= 32"),
    ((2, 4, 64, 64), r"\(2, 4, 64, 64\)"),
])
def test_bad_images_are_clear_errors(shape, word):
    model = build_model(_cfg(last_stride=2), 0).eval()
    with pytest.raises(ValueError, match=word):
        model(torch.zeros(shape))
    with pytest.raises(ValueError, match=word):
        model.forward_train(torch.zeros(shape))


def test_integer_images_and_last_stride_minimum():
    model = build_model(_cfg(last_stride=1), 0).eval()
    with pytest.raises(ValueError, match="float"):
        model(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 48)  # output stride 16 with last_stride=1


def test_channels_last_bf16_autocast_gives_unit_float32_embeddings():
    model = build_model(_cfg(descriptors="SMG"), 0).eval()
    x = torch.randn(2, 3, 64, 64)
    ref = model(x)
    model = model.to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        emb = model(x.to(memory_format=torch.channels_last))
    assert emb.dtype == torch.float32 and torch.isfinite(emb).all()
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))
    assert (emb * ref).sum(dim=1).min() > 0.98  # bf16 stays close to fp32


def test_attention_maps_one_per_stage_in_unit_interval():
    model = build_model(_cfg(last_stride=1), 0).eval()
    with torch.no_grad():  # give the spatial gates something to show (their BN γ starts at 0)
        for m in model.modules():
            if isinstance(m, SpatialGate):
                nn.init.ones_(m.bn.weight)
    maps = model.attention_maps(torch.randn(2, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(2, 1, 16, 16), (2, 1, 8, 8), (2, 1, 4, 4), (2, 1, 4, 4)]
    assert all(((m > 0) & (m < 1)).all() and m.std() > 0 for m in maps)


@pytest.mark.parametrize("kw", [dict(attention="none"), dict(attention="se")])
def test_attention_maps_without_spatial_gate_is_a_clear_error(kw):
    with pytest.raises(ValueError, match="no spatial attention"):
        build_model(_cfg(**kw), 0).attention_maps(torch.randn(1, 3, 32, 32))
