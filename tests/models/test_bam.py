"""BAM (Park et al. 2018): shapes, placement, the paper's sum, identity start, parameter count, one training step."""
import pytest
import torch
import torchvision
import torch.nn.functional as F
from torch import nn

from retrieval.config import LossConfig, ModelConfig, OptimConfig
from retrieval.losses import RetrievalLoss
from retrieval.models import BAM, ResNetBackbone, build_model
from retrieval.models.attention import build_attention
from retrieval.optim import build_optimizer
from tests.models.nets import n_params, randomise_bn


def test_shapes_of_output_and_attention():
    bam = BAM(64).eval()
    x = torch.randn(2, 64, 9, 7)
    assert bam(x).shape == x.shape
    assert bam.attention(x).shape == x.shape  # 3-D attention: the branches broadcast
    assert bam.channel(x).shape == (2, 64, 1, 1) and bam.spatial(x).shape == (2, 1, 9, 7)


def test_layers_as_the_paper_r16_d4():
    bam = BAM(256)
    assert [m.out_features for m in bam.channel.mlp if isinstance(m, nn.Linear)] == [16, 256]
    convs = [m for m in bam.spatial.body if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.dilation[0]) for c in convs] == [
        (256, 16, 1, 1), (16, 16, 3, 4), (16, 16, 3, 4), (16, 1, 1, 1)]


def test_paper_form_is_f_plus_f_times_sigmoid_of_the_sum():
    torch.manual_seed(0)
    bam = BAM(32, reduction=4, init="paper")
    randomise_bn(bam)
    bam.eval()
    x = torch.randn(2, 32, 8, 8)
    # Independent path through the sub-modules: F + F ⊗ σ(M_c + M_s), BAM Eq. 1–2.
    channel = bam.channel.mlp(x.mean(dim=(2, 3)))[:, :, None, None]
    expected = x + x * torch.sigmoid(channel + bam.spatial.body(x))
    torch.testing.assert_close(bam(x), expected)


def test_bam_after_stages_1_to_3_only():
    backbone = ResNetBackbone("resnet18", bottleneck=BAM)
    assert [b.channel.mlp[0].in_features for b in (backbone.bam1, backbone.bam2, backbone.bam3)] == [64, 128, 256]
    assert not any(".cbam." in n for n, _ in backbone.named_parameters())
    assert [n for n, m in backbone.named_modules() if isinstance(m, BAM)] == ["bam1", "bam2", "bam3"]
    assert not backbone.has_attention and backbone.has_bottleneck_attention


def _bam(channels: int, r: int = 16) -> int:
    """BAM's parameters from its layers (bias on every Linear/conv, as the official code)."""
    h = channels // r
    channel = (channels * h + h) + 2 * h + (h * channels + channels)  # FC C→C/r, BN1d, FC C/r→C
    spatial = (channels * h + h) + 2 * h  # 1×1 conv C→C/r, BN
    spatial += 2 * ((9 * h * h + h) + 2 * h)  # two 3×3 dilated convs C/r→C/r, each with BN
    spatial += h + 1  # 1×1 conv C/r→1
    return channel + spatial


def test_resnet50_parameter_count_is_plain_resnet50_plus_three_bams():
    backbone = ResNetBackbone("resnet50", bottleneck=BAM)
    tv = torchvision.models.resnet50()
    plain = n_params(tv) - n_params(tv.fc)
    assert n_params(backbone) == plain + _bam(256) + _bam(512) + _bam(1024)
    # BAM Table 4 (ImageNet classifier): ResNet-50 25.56M → ResNet-50 + BAM 25.92M
    assert abs((n_params(backbone) + n_params(tv.fc)) / 25.92e6 - 1) < 0.01


@pytest.mark.parametrize("train", [False, True])
def test_identity_start_computes_exactly_the_plain_network(train):
    torch.manual_seed(0)
    plain = ResNetBackbone("resnet18", last_stride=1)
    randomise_bn(plain)
    cfg = ModelConfig(backbone="resnet18", attention="bam", cbam_init="identity")
    with_bam = ResNetBackbone("resnet18", last_stride=1, bottleneck=build_attention(cfg, "identity").bottleneck)
    missing = with_bam.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith(("bam1.", "bam2.", "bam3.")) for k in missing)
    randomise_bn(with_bam.bam1)  # the BAM's own BNs do not matter: its last layers are zero
    plain.train(train), with_bam.train(train)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(with_bam(x), plain(x))


def test_paper_init_is_not_an_identity():
    torch.manual_seed(0)
    plain = ResNetBackbone("resnet18").eval()
    paper = ResNetBackbone("resnet18", bottleneck=BAM).eval()
    paper.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(paper(x), plain(x))
        z = torch.randn(2, 64, 8, 8)
        assert (paper.bam1(z) / z).min() > 1  # F ⊗ (1 + σ): every activation grows


def test_attention_bam_builds_and_trains_one_step():
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="resnet18", attention="bam", embedding_dim=16)
    model = build_model(cfg, num_classes=4, load_weights=False).train()
    loss = RetrievalLoss(LossConfig(name="triplet"), 4, 16)
    opt = build_optimizer(OptimConfig(lr=1e-3, attention_lr_mult=10), model, loss)
    groups = {g["name"]: g for g in opt.param_groups}
    names = {id(p): n for n, p in model.named_parameters()}
    attention = {names[id(p)] for p in groups["attention"]["params"]}
    bam = {n for n in names.values() if ".bam" in n}
    assert bam and attention == bam  # every BAM parameter, nothing else, at the attention lr
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    images, labels = torch.randn(8, 3, 64, 64), torch.arange(4).repeat(2)
    emb, logits = model.forward_train(images)
    total = loss(emb, logits, labels).total
    opt.zero_grad()
    total.backward()
    opt.step()
    assert torch.isfinite(total)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("backbone.bam1.") for n in moved) and any(n.startswith("backbone.layer1.") for n in moved)
    assert F.normalize(model.eval()(images[:2]), dim=1).shape == (2, 16)
