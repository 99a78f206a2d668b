"""Pair explanations (retrieval/explain.py): exact SPoC split, shares = the model's cosine, object vs clutter.

Tolerances. The explanation is computed in float64 from float32 feature maps; a float64
reference of the same sums differs only in summation order, i.e. by a few units of 2^-53
times the sum of |terms| (≤ ~1e-15 here), so 1e-10 is loose on every CPU. Against
``model(images)``, which runs the head in float32 (2^-24 ≈ 6e-8 per rounding, dot products
over ≤ 512 channels and then a 48-d cosine), the bound is ~1e-6; 1e-5 is used.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from retrieval.config import Config
from retrieval.explain import PairExplanation, explain_features, explain_pair
from retrieval.models import CGDHead, RetrievalNet, build_model

EXACT = 1e-10  # float64 against float64 (see the module docstring)
FLOAT32 = 1e-5  # float64 against the model's float32 head


def _randomise_bn(head: CGDHead) -> None:
    """Running statistics and an affine part far from the identity, with a non-zero shift (the bias term)."""
    for bn in head.bns:
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 2.0)
        bn.bias.data.normal_()


def _head(descriptors: str, bn: bool, channels: int = 16, branch: int = 8) -> CGDHead:
    torch.manual_seed(0)
    head = CGDHead(channels, descriptors, branch * len(descriptors), embedding_bn=bn)
    if bn:
        _randomise_bn(head)
    return head.eval()


def _reference_share(head: CGDHead, fq: torch.Tensor, fr: torch.Tensor, b: int) -> tuple[float, torch.Tensor]:
    """(branch b's share of the cosine, pair matrix ⟨z_q,i, z_r,j⟩ · k) of the SPoC branch, by hand in float64.

    z_i is the branch's output for location i alone: FC(F_i / hw), with the BN's constant part bn(0) / hw.
    """
    def bn(u):
        if head.bns is None:
            return u
        m = head.bns[b]
        return F.batch_norm(u, m.running_mean.double(), m.running_var.double(), m.weight.double(), m.bias.double(),
                            training=False, eps=m.eps)

    def branches(f):
        pooled = [f.mean(dim=(1, 2)) if k == "S" else f.amax(dim=(1, 2)) if k == "M"
                  else f.clamp(min=1e-6).pow(3).mean(dim=(1, 2)).pow(1 / 3) for k in head.descriptors]
        return [bn(F.linear(p[None], fc.weight.double()))[0] for p, fc in zip(pooled, head.fcs)]

    def locations(f):
        hw = f.shape[1] * f.shape[2]
        cells = f.flatten(1).T / hw  # (hw, C)
        zero = bn(torch.zeros(1, head.fcs[b].out_features, dtype=torch.float64))
        return bn(F.linear(cells, head.fcs[b].weight.double())) - zero + zero / hw

    with torch.no_grad():
        yq, yr = branches(fq), branches(fr)
        big_q = torch.cat([F.normalize(y, dim=0) for y in yq]).norm()
        big_r = torch.cat([F.normalize(y, dim=0) for y in yr]).norm()
        k = 1 / (yq[b].norm() * yr[b].norm() * big_q * big_r)
        share = float(k * (yq[b] @ yr[b]))
        return share, k * locations(fq) @ locations(fr).T


@pytest.mark.parametrize("bn", [False, True], ids=["plain", "centring-bn"])
def test_spoc_map_is_the_exact_pairwise_decomposition(bn):
    head = _head("SMG", bn)
    gen = torch.Generator().manual_seed(1)
    fq = F.relu(torch.randn(16, 5, 4, generator=gen, dtype=torch.float64))  # post-ReLU maps, different sizes
    fr = F.relu(torch.randn(16, 3, 6, generator=gen, dtype=torch.float64))
    got = explain_features(head, fq.float(), fr.float())
    fq, fr = fq.float().double(), fr.float().double()  # what the explanation saw
    share, pairs = _reference_share(head, fq, fr, b=0)
    assert got.exact == {"S": True, "M": False, "G": False} and got.note == "S exact, M/G first-order"
    assert got.shares["S"] == pytest.approx(share, abs=EXACT)
    assert float(got.query_maps["S"].sum()) == pytest.approx(share, abs=EXACT)
    assert float(got.result_maps["S"].sum()) == pytest.approx(share, abs=EXACT)
    torch.testing.assert_close(got.query_maps["S"].flatten(), pairs.sum(1), rtol=0, atol=EXACT)
    torch.testing.assert_close(got.result_maps["S"].flatten(), pairs.sum(0), rtol=0, atol=EXACT)
    for letter in "MG":  # first-order maps still add up to their share (degree-1 pools, constants spread)
        assert float(got.query_maps[letter].sum()) == pytest.approx(got.shares[letter], abs=EXACT)
        assert float(got.result_maps[letter].sum()) == pytest.approx(got.shares[letter], abs=EXACT)
    assert float(got.query_map.sum()) == pytest.approx(got.score, abs=EXACT)
    assert got.score == pytest.approx(sum(got.shares.values()), abs=EXACT)


def _tiny_model(descriptors: str, bn: bool) -> RetrievalNet:
    cfg = Config()
    cfg.model.backbone, cfg.model.pretrained, cfg.model.descriptors = "resnet18", "none", descriptors
    cfg.model.embedding_dim, cfg.model.embedding_bn = 16 * len(descriptors), bn
    torch.manual_seed(0)
    model = build_model(cfg.model, num_classes=0, load_weights=False)
    if bn:
        _randomise_bn(model.head)
    return model.eval()


@pytest.mark.parametrize("descriptors, bn", [("SMG", False), ("SG", True), ("MG", True), ("G", False)])
def test_shares_sum_to_the_models_cosine(descriptors, bn):
    model = _tiny_model(descriptors, bn)
    gen = torch.Generator().manual_seed(2)
    query, result = torch.randn(3, 48, 48, generator=gen), torch.randn(3, 64, 48, generator=gen)
    got = explain_pair(model, query, result)
    with torch.no_grad():
        cosine = float(model(query[None]) @ model(result[None]).T)
    assert set(got.shares) == set(descriptors)
    assert sum(got.shares.values()) == pytest.approx(got.score, abs=EXACT)
    assert got.score == pytest.approx(cosine, abs=FLOAT32)
    assert got.query_map.shape == (3, 3) and got.result_map.shape == (4, 3)  # stride 16
    assert float(got.query_map.sum()) == pytest.approx(got.score, abs=EXACT)
    assert float(got.result_map.sum()) == pytest.approx(got.score, abs=EXACT)
    up = explain_pair(model, query, result, upsample=True)
    assert up.upsampled and up.query_map.shape == (48, 48) and up.result_map.shape == (64, 48)
    assert float(up.result_map.sum()) == pytest.approx(got.score, rel=0.05)  # per pixel; bilinear ≈ sum-preserving


def test_first_order_maps_are_gradient_times_activation_of_the_models_own_head():
    """Independent float32 path: the head's own modules, autograd on the backbone's output."""
    model = _tiny_model("MG", bn=True)
    gen = torch.Generator().manual_seed(3)
    query, result = torch.randn(1, 3, 48, 48, generator=gen), torch.randn(1, 3, 48, 48, generator=gen)
    got = explain_pair(model, query, result)
    with torch.no_grad():
        feats = [model.backbone(query), model.backbone(result)]
    feats = [f.requires_grad_(True) for f in feats]
    parts = [model.head.branches([pool(f) for pool in model.head.pools]) for f in feats]
    big = [torch.cat([F.normalize(u, dim=1) for u in p], dim=1).norm().detach() for p in parts]
    for b, letter in enumerate("MG"):
        uq, ur = parts[0][b][0], parts[1][b][0]
        k = 1 / (uq.norm() * ur.norm() * big[0] * big[1]).detach()
        grads = torch.autograd.grad(k * (uq @ ur), feats, retain_graph=True)
        for f, g, mine in zip(feats, grads, (got.query_maps[letter], got.result_maps[letter])):
            local = (f * g).sum(dim=1)[0].double().detach()
            # equal up to the constant part spread uniformly over the locations
            torch.testing.assert_close(mine - mine.mean(), local - local.mean(), rtol=0, atol=FLOAT32)


class ColourDetectors(nn.Module):
    """A stand-in backbone: channel k fires where a 4×4 cell has colour k (template match + ReLU), stride 4."""
    arch, output_stride, has_attention = "colour detectors", 4, False

    def __init__(self, colours: list[tuple[float, float, float]]) -> None:
        super().__init__()
        self.out_channels = len(colours)
        self.conv = nn.Conv2d(3, len(colours), 4, stride=4)
        centred = torch.tensor(colours) - 0.5  # a mid-grey pixel matches nothing
        with torch.no_grad():
            self.conv.weight.copy_(centred[:, :, None, None].expand(-1, -1, 4, 4) / 16)
            self.conv.bias.copy_(-0.5 * centred.sum(1) - 0.5)  # ⟨p − 0.5, colour⟩ − 0.5: only the colour itself

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(images))


COLOURS = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1)]  # red = the object, the rest clutter


def _scene(object_at: tuple[int, int], clutter: list[tuple[int, tuple[int, int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(image (3, 32, 32) on mid grey, object mask (8, 8) at feature resolution): 8×8 squares on the 4-px grid."""
    image = torch.full((3, 32, 32), 0.5)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    for colour, (y, x) in [(0, object_at), *clutter]:
        image[:, y:y + 8, x:x + 8] = torch.tensor(COLOURS[colour], dtype=torch.float32)[:, None, None]
    mask[object_at[0] // 4:object_at[0] // 4 + 2, object_at[1] // 4:object_at[1] // 4 + 2] = True
    return image, mask


@pytest.mark.parametrize("bn", [False, True], ids=["plain", "centring-bn"])
def test_positive_mass_lies_on_the_shared_object(bn):
    query, q_mask = _scene((4, 4), [(1, (20, 4)), (2, (4, 20))])
    result, r_mask = _scene((20, 16), [(3, (4, 4)), (4, (20, 0)), (5, (4, 20))])
    torch.manual_seed(0)
    head = CGDHead(len(COLOURS), "SMG", 3 * 6, embedding_bn=bn)
    for fc in head.fcs:  # a rotation: the branch keeps which colours it saw (a random FC mixes them in)
        nn.init.orthogonal_(fc.weight)
    if bn:  # running statistics of a few scenes with one random coloured square each, as training would leave
        scenes = torch.stack([_scene((4 * (i % 6), 4 * (i // 6)), [(1 + i % 5, (20, 20))])[0] for i in range(24)])
        head.train()
        with torch.no_grad():
            head(ColourDetectors(COLOURS)(scenes))
    model = RetrievalNet(ColourDetectors(COLOURS), head).eval()
    got = explain_pair(model, query, result)
    assert got.score > 0.2
    for maps, mask in ((got.query_maps, q_mask), (got.result_maps, r_mask)):
        for letter, values in [*maps.items(), ("all", sum(maps.values()))]:
            positive = values.clamp(min=0)
            on_object = float(positive[mask].sum() / positive.sum())
            # the clutter colours of the two images differ, so nothing of theirs can match: all but
            # rounding (and GeM's clamp floor, ~1e-5 of the mass) is on the object
            assert on_object > 0.9, f"{letter}: {on_object:.2f} of the positive mass on the object"


def test_the_model_is_left_as_found():
    model = _tiny_model("SG", bn=True).train()
    model.backbone.layer1.eval()  # a mixed state must survive, not just the top-level flag
    model.head.fcs[0].weight.requires_grad_(False)
    modes = {name: m.training for name, m in model.named_modules()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    state = copy.deepcopy(model.state_dict())
    pair = torch.randn(3, 32, 32), torch.randn(3, 32, 32)
    # a service's request handler may call it like this; the explanation is still float32 + float64
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = explain_pair(model, *pair)
    assert isinstance(got, PairExplanation)
    assert got.score == explain_pair(model, *pair).score
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():  # BN running statistics untouched (eval-mode pass)
        assert torch.equal(value, state[key]), key


def test_bad_inputs_are_refused():
    model = _tiny_model("SG", bn=False)
    with pytest.raises(ValueError, match="expected one image"):
        explain_pair(model, torch.randn(2, 3, 32, 32), torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="3 colour channels"):
        explain_pair(model, torch.randn(3, 32, 32), torch.randn(1, 32, 32))
    with pytest.raises(ValueError, match="channels for a head"):
        explain_features(model.head, torch.rand(8, 2, 2), torch.rand(8, 2, 2))
