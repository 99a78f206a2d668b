"""CBAM gates against the paper's equations written out by hand; identity start; ablation switches."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from retrieval.models import CBAM, ChannelGate, SpatialGate


def _randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter and BN statistic a random value (so no gate is trivially 0.5 or 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return module.eval()


def _channel_weights(gate: ChannelGate, x: torch.Tensor, pools=("avg", "max")) -> torch.Tensor:
    # CBAM Eq. 2: M_c = σ(W1(W0(F_avg)) + W1(W0(F_max))), with biases as the official code.
    w0, b0, w1, b1 = gate.mlp[0].weight, gate.mlp[0].bias, gate.mlp[2].weight, gate.mlp[2].bias
    vecs = {"avg": x.mean(dim=(2, 3)), "max": x.flatten(2).max(dim=2).values}
    z = sum(F.relu(vecs[p] @ w0.T + b0) @ w1.T + b1 for p in pools)
    return torch.sigmoid(z)[:, :, None, None]


def _channel_ref(gate: ChannelGate, x: torch.Tensor, pools=("avg", "max")) -> torch.Tensor:
    return x * _channel_weights(gate, x, pools)


def _spatial_weights(gate: SpatialGate, x: torch.Tensor, pools=("max", "avg")) -> torch.Tensor:
    # CBAM Eq. 3: M_s = σ(BN(f^{k×k}([MaxPool(F); AvgPool(F)]))) with pooling over channels.
    maps = {"max": x.max(dim=1, keepdim=True).values, "avg": x.mean(dim=1, keepdim=True)}
    z = F.conv2d(torch.cat([maps[p] for p in pools], 1), gate.conv.weight, padding=gate.conv.kernel_size[0] // 2)
    bn = gate.bn
    z = (z - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps)
    z = z * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    return torch.sigmoid(z)


def _spatial_ref(gate: SpatialGate, x: torch.Tensor, pools=("max", "avg")) -> torch.Tensor:
    return x * _spatial_weights(gate, x, pools)


@pytest.fixture
def x():
    return torch.randn(2, 32, 6, 5, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("pool,pools", [("avg_max", ("avg", "max")), ("avg", ("avg",)), ("max", ("max",))])
def test_channel_gate_matches_paper_equation(x, pool, pools):
    gate = _randomise(ChannelGate(32, reduction=4, pool=pool))
    torch.testing.assert_close(gate(x), _channel_ref(gate, x, pools))


@pytest.mark.parametrize("pool,pools,kernel", [("avg_max", ("max", "avg"), 7), ("avg", ("avg",), 3), ("max", ("max",), 7)])
def test_spatial_gate_matches_paper_equation(x, pool, pools, kernel):
    gate = _randomise(SpatialGate(kernel_size=kernel, pool=pool))
    assert gate.conv.weight.shape == (1, len(pools), kernel, kernel) and gate.conv.bias is None
    torch.testing.assert_close(gate(x), _spatial_ref(gate, x, pools))


def test_arrangements_match_their_definitions(x):
    kwargs = dict(channels=32, reduction=4, kernel_size=3)
    seq = _randomise(CBAM(**kwargs, arrangement="channel_spatial"))
    rev = _randomise(CBAM(**kwargs, arrangement="spatial_channel"))
    par = _randomise(CBAM(**kwargs, arrangement="parallel"))
    ch, sp = seq.channel, seq.spatial  # same seed → the three modules hold identical weights
    torch.testing.assert_close(seq(x), _spatial_ref(sp, _channel_ref(ch, x)))
    torch.testing.assert_close(rev(x), _channel_ref(ch, _spatial_ref(sp, x)))
    # parallel: both gates computed from the same input x, then both multiplied in
    torch.testing.assert_close(par(x), x * _channel_weights(ch, x) * _spatial_weights(sp, x))
    assert not torch.allclose(seq(x), rev(x)) and not torch.allclose(seq(x), par(x))


def test_channel_only_variant_has_no_spatial_gate(x):
    se = _randomise(CBAM(32, reduction=4, spatial=False, pool="avg"))
    assert se.spatial is None
    torch.testing.assert_close(se(x), _channel_ref(se.channel, x, ("avg",)))


@pytest.mark.parametrize("arrangement", ["channel_spatial", "spatial_channel", "parallel"])
@pytest.mark.parametrize("pool", ["avg", "max", "avg_max"])
@pytest.mark.parametrize("spatial", [True, False])
def test_identity_init_is_exact_identity_in_train_and_eval(x, arrangement, pool, spatial):
    cbam = CBAM(32, reduction=4, arrangement=arrangement, pool=pool, spatial=spatial, init="identity")
    x = x.relu() + 0.1  # post-BN-like features, never all zero
    assert torch.equal(cbam.train()(x), x)
    assert torch.equal(cbam.eval()(x), x)


def test_paper_init_follows_official_code(x):
    cbam = CBAM(32, reduction=4, init="paper")
    # official init_weights: spatial-gate BN weight and every bias zero → spatial gate 0.5
    assert torch.equal(cbam.spatial.bn.weight, torch.zeros(1)) and torch.equal(cbam.channel.mlp[2].bias, torch.zeros(32))
    assert torch.equal(cbam.spatial.gate(x), torch.full((2, 1, 6, 5), 0.5))
    assert cbam.channel.mlp[2].weight.abs().sum() > 0  # default Linear init, not zero
    assert not torch.allclose(cbam(x), x)  # the paper's start is not an identity


def test_identity_init_gates_learn_from_first_step(x):
    cbam = CBAM(32, reduction=4, init="identity").train()
    (cbam(x) * torch.randn_like(x)).sum().backward()
    # the zero-initialised last layers receive gradient at step 0
    assert cbam.channel.mlp[2].weight.grad.abs().sum() > 0
    assert cbam.spatial.bn.weight.grad.abs().sum() > 0


def test_parameter_count_matches_formula():
    # MLP C→C/r→C with biases (2·C²/r + C/r + C) + 7×7×2 conv + BN(1) affine
    c, r = 256, 16
    expected = 2 * c * c // r + c // r + c + 2 * 7 * 7 + 2
    assert sum(p.numel() for p in CBAM(c, r).parameters()) == expected


@pytest.mark.parametrize("kwargs,word", [
    (dict(arrangement="serial"), "serial"), (dict(pool="lse"), "lse"), (dict(init="zeros"), "zeros"),
    (dict(kernel_size=4), "kernel_size"),
])
def test_bad_options_are_clear_errors(kwargs, word):
    with pytest.raises(ValueError, match=word):
        CBAM(32, **kwargs)
