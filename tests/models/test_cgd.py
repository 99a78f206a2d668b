"""CGD head against the paper's formulas computed with numpy."""
import numpy as np
import pytest
import torch

from retrieval.models import CGDHead, GlobalDescriptor

COMBOS = ["S", "M", "G", "SM", "SG", "MG", "SMG"]


@pytest.fixture
def feats():
    return torch.rand(3, 16, 5, 4, generator=torch.Generator().manual_seed(0)) * 2  # post-ReLU-like


def _gem_ref(x: np.ndarray, p: float) -> np.ndarray:
    # CGD Eq. 1: f_c = (1/|X_c| Σ x^p)^(1/p)
    return (np.maximum(x, 1e-6) ** p).mean(axis=(2, 3)) ** (1 / p)


def test_descriptors_match_their_definitions(feats):
    x = feats.double().numpy()
    np.testing.assert_allclose(GlobalDescriptor("S")(feats).numpy(), x.mean(axis=(2, 3)), rtol=1e-6)
    np.testing.assert_allclose(GlobalDescriptor("M")(feats).numpy(), x.max(axis=(2, 3)), rtol=1e-6)
    np.testing.assert_allclose(GlobalDescriptor("G", p=3.0)(feats).detach().numpy(), _gem_ref(x, 3.0), rtol=1e-5)
    # GeM spans SPoC (p = 1) and approaches MAC as p grows
    np.testing.assert_allclose(GlobalDescriptor("G", p=1.0)(feats).detach().numpy(), x.mean(axis=(2, 3)), rtol=1e-5)
    np.testing.assert_allclose(GlobalDescriptor("G", p=60.0)(feats).detach().numpy(), x.max(axis=(2, 3)), rtol=0.05)


def test_gem_p_learnable_or_fixed(feats):
    fixed, learn = GlobalDescriptor("G", 3.0), GlobalDescriptor("G", 3.0, learnable=True)
    assert not fixed.p.requires_grad and not list(fixed.parameters()) and "p" in fixed.state_dict()
    assert "p" in learn.state_dict()
    learn(feats).sum().backward()
    assert learn.p.grad is not None and learn.p.grad.abs() > 0


def test_pools_bf16_features_in_float32(feats):
    out = GlobalDescriptor("G")(feats.bfloat16())
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("desc", COMBOS)
def test_head_matches_reference_and_splits_dim(feats, desc):
    head = CGDHead(16, desc, embedding_dim=12, num_classes=0).eval()
    emb = head(feats)
    assert emb.shape == (3, 12) and emb.dtype == torch.float32
    # reference: per branch pool → W (no bias) → L2; concat → L2 (CGD Fig. 2)
    x, k = feats.double().numpy(), len(desc)
    pools = {"S": x.mean(axis=(2, 3)), "M": x.max(axis=(2, 3)), "G": _gem_ref(x, 3.0)}
    parts = []
    for letter, fc in zip(desc, head.fcs):
        assert fc.bias is None and fc.out_features == 12 // k
        v = pools[letter] @ fc.weight.detach().double().numpy().T
        parts.append(v / np.linalg.norm(v, axis=1, keepdims=True))
    ref = np.concatenate(parts, axis=1)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(emb.detach().numpy(), ref, atol=1e-5)
    # each branch is a unit vector scaled by 1/sqrt(k) after the final normalisation
    norms = emb.view(3, k, 12 // k).norm(dim=2)
    torch.testing.assert_close(norms, torch.full((3, k), k ** -0.5))


def test_classifier_on_first_descriptor_with_temperature(feats):
    head = CGDHead(16, "GS", embedding_dim=8, num_classes=5, temperature=0.5).eval()
    with torch.no_grad():
        bn, fc = head.classifier
        bn.running_mean.uniform_(0, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 2)
    emb, logits = head.forward_train(feats)
    assert fc.bias is None and logits.shape == (3, 5)
    g = torch.from_numpy(_gem_ref(feats.double().numpy(), 3.0)).float()  # first letter: GeM
    ref = ((g - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias) @ fc.weight.T / 0.5
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(emb, head(feats))


def test_no_classifier_when_no_classes(feats):
    head = CGDHead(16, "SG", embedding_dim=8, num_classes=0)
    assert head.classifier is None and head.forward_train(feats)[1] is None


@pytest.mark.parametrize("kwargs,word", [
    (dict(descriptors="SMG", embedding_dim=1024), "embedding_dim: 1024"),
    (dict(descriptors="SX"), "descriptors"), (dict(descriptors="SS"), "descriptors"),
    (dict(descriptors=""), "descriptors"), (dict(temperature=0.0), "temperature"),
])
def test_bad_head_options_are_clear_errors(kwargs, word):
    with pytest.raises(ValueError, match=word):
        CGDHead(16, **kwargs)


def _bn_ref(u: np.ndarray, gamma: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    return (u - mean) / np.sqrt(var + eps) * gamma  # shift fixed at 0


def _l2(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_embedding_bn_centres_each_branch_before_its_l2_norm():
    feats = torch.rand(12, 16, 5, 4, generator=torch.Generator().manual_seed(1)) * 2
    head = CGDHead(16, "SG", embedding_dim=8, embedding_bn=True)
    with torch.no_grad():
        for bn in head.bns:
            bn.weight.uniform_(0.5, 1.5)
    x = feats.double().numpy()
    pooled = [x.mean(axis=(2, 3)), _gem_ref(x, 3.0)]
    us = [p @ fc.weight.detach().double().numpy().T for p, fc in zip(pooled, head.fcs)]
    gammas = [bn.weight.detach().double().numpy() for bn in head.bns]
    # training mode: batch statistics (biased variance, as BatchNorm normalises)
    ref = _l2(np.concatenate([_l2(_bn_ref(u, g, u.mean(0), u.var(0))) for u, g in zip(us, gammas)], axis=1))
    np.testing.assert_allclose(head.train()(feats).detach().numpy(), ref, atol=1e-5)
    # eval mode: the running statistics that forward pass left (momentum 0.1, unbiased variance)
    running = [(0.1 * u.mean(0), 0.9 + 0.1 * u.var(0, ddof=1)) for u in us]
    ref = _l2(np.concatenate([_l2(_bn_ref(u, g, m, v)) for u, g, (m, v) in zip(us, gammas, running)], axis=1))
    np.testing.assert_allclose(head.eval()(feats).detach().numpy(), ref, atol=1e-5)
    assert all(not bn.bias.requires_grad and bn.weight.requires_grad for bn in head.bns)


def test_embedding_bn_without_its_scale_standardises_each_coordinate():
    feats = torch.rand(12, 16, 5, 4, generator=torch.Generator().manual_seed(4)) * 2
    head = CGDHead(16, "SG", embedding_dim=8, embedding_bn=True, bn_scale=False)
    assert not any(p.requires_grad for bn in head.bns for p in bn.parameters()) and not list(head.bns.parameters())
    x = feats.double().numpy()
    us = [p @ fc.weight.detach().double().numpy().T for p, fc in zip([x.mean(axis=(2, 3)), _gem_ref(x, 3.0)], head.fcs)]
    ref = _l2(np.concatenate([_l2(_bn_ref(u, np.ones(u.shape[1]), u.mean(0), u.var(0))) for u in us], axis=1))
    np.testing.assert_allclose(head.train()(feats).detach().numpy(), ref, atol=1e-5)


def test_positive_features_make_a_cone_that_embedding_bn_removes():
    feats = torch.rand(64, 32, 4, 4, generator=torch.Generator().manual_seed(2)) * 2  # post-ReLU: all >= 0
    plain = CGDHead(32, "SG", embedding_dim=16)(feats)
    centred = CGDHead(32, "SG", embedding_dim=16, embedding_bn=True).train()(feats)
    assert plain.mean(0).norm() > 0.9  # one shared direction: the cone of issue #10
    assert centred.mean(0).norm() < 0.3


def test_bnneck_metric_loss_reads_before_the_bn_and_the_classifier_after_it():
    """Luo et al. 2019 §3.6: metric loss on pre-BN features, classifier on post-BN, retrieval post-BN."""
    feats = torch.rand(12, 16, 5, 4, generator=torch.Generator().manual_seed(3)) * 2
    torch.manual_seed(0)
    shipped = CGDHead(16, "SG", embedding_dim=8, num_classes=5, embedding_bn=True)
    torch.manual_seed(0)
    neck = CGDHead(16, "SG", embedding_dim=8, num_classes=5, embedding_bn=True, metric_on="pre_bn",
                   classifier_on="embedding")
    neck.fcs.load_state_dict(shipped.fcs.state_dict())
    x = feats.double().numpy()
    pooled = [x.mean(axis=(2, 3)), _gem_ref(x, 3.0)]
    us = [p @ fc.weight.detach().double().numpy().T for p, fc in zip(pooled, neck.fcs)]
    seen, logits = neck.train().forward_train(feats)
    np.testing.assert_allclose(seen.detach().numpy(), _l2(np.concatenate([_l2(u) for u in us], axis=1)), atol=1e-5)
    post = np.concatenate([_bn_ref(u, np.ones(u.shape[1]), u.mean(0), u.var(0)) for u in us], axis=1)
    ref_logits = post @ neck.classifier[0].weight.detach().double().numpy().T / neck.temperature
    np.testing.assert_allclose(logits.detach().numpy(), ref_logits, atol=1e-4)
    # retrieval is the post-BN embedding either way: same weights and statistics → same vectors
    shipped.train().forward_train(feats)
    np.testing.assert_allclose(neck.eval()(feats).detach().numpy(), shipped.eval()(feats).detach().numpy(), atol=1e-6)
    assert neck.train()(feats).mean(0).norm() < 0.5 < seen.mean(0).norm()  # the loss sees the cone, retrieval does not


def test_reading_around_the_bn_needs_the_bn():
    from retrieval.config import load_config
    from retrieval.errors import ConfigError

    with pytest.raises(ConfigError, match="model.metric_on"):
        load_config(None, ["model.embedding_bn=false", "model.metric_on=pre_bn"])
    with pytest.raises(ConfigError, match="model.embedding_bn_scale"):
        load_config(None, ["model.embedding_bn=false", "model.embedding_bn_scale=false"])
    with pytest.raises(ConfigError, match="model.classifier_on"):
        load_config(None, ["model.classifier_on=posterior"])
