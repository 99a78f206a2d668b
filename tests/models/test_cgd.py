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
