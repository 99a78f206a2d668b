"""model.attention: every family builds, the old keys cbam / cbam_spatial still read, old checkpoints still load."""
import logging

import pytest
import torch

from retrieval.checkpoint import load_model, save_checkpoint
from retrieval.config import ModelConfig, choices, load_config, to_dict
from retrieval.errors import ConfigError
from retrieval.models import ATTENTIONS, BAM, CBAM, build_model, is_attention_parameter


def test_config_choice_is_the_registry():
    assert choices()["model.attention"] is ATTENTIONS and set(ATTENTIONS) == {"cbam", "bam", "se", "none"}


@pytest.mark.parametrize("kind,cbams,bams,spatial", [
    ("cbam", 8, 0, True), ("se", 8, 0, False), ("bam", 0, 3, None), ("none", 0, 0, None)])
def test_every_family_builds_where_it_belongs(kind, cbams, bams, spatial):
    model = build_model(ModelConfig(backbone="resnet18", attention=kind, embedding_dim=16), 0)
    found = [m for m in model.modules() if isinstance(m, CBAM)]
    assert len(found) == cbams and sum(isinstance(m, BAM) for m in model.modules()) == bams
    if found:
        assert all((m.spatial is not None) == spatial for m in found)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 16)
    assert len(model.gate_modules()) == {"cbam": 4, "bam": 3}.get(kind, 0)


def test_attention_parameter_names():
    assert is_attention_parameter("backbone.layer1.0.cbam.channel.mlp.0.weight")
    assert is_attention_parameter("bam2.spatial.body.0.weight")
    assert is_attention_parameter("backbone.bam3.channel.mlp.3.bias")
    assert not is_attention_parameter("backbone.layer1.0.bn1.weight") and not is_attention_parameter("head.bams.0")


@pytest.mark.parametrize("overrides,expected", [
    (["model.cbam=false"], "none"), (["model.cbam_spatial=false"], "se"), (["model.cbam=true"], "cbam"),
    (["model.cbam=false", "model.cbam_spatial=false"], "none"), (["model.cbam=true", "model.attention=bam"], "bam"),
])
def test_old_keys_are_read_with_a_warning_naming_the_new_key(overrides, expected, caplog):
    with caplog.at_level(logging.WARNING, logger="retrieval.config"):
        cfg = load_config(None, overrides)
    assert cfg.model.attention == expected and not hasattr(cfg.model, "cbam")
    assert "model.attention" in caplog.text


def test_old_keys_contradicting_the_new_one_are_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  cbam: false\n  attention: bam\n")
    with pytest.raises(ConfigError, match="contradict model.attention=bam"):
        load_config(path)
    with pytest.raises(ConfigError, match="model.cbam_spatial: expected bool"):
        load_config(None, ["model.cbam_spatial=maybe"])


@pytest.mark.parametrize("cbam,spatial,kind", [(True, True, "cbam"), (True, False, "se"), (False, True, "none")])
def test_checkpoint_with_the_old_keys_loads_strictly(tmp_path, caplog, cbam, spatial, kind):
    """A run folder of an earlier version stored model.cbam / model.cbam_spatial, not model.attention."""
    cfg = load_config(None, ["model.backbone=resnet18", "model.embedding_dim=16", f"model.attention={kind}"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 0).eval()
    stored = to_dict(cfg)
    del stored["model"]["attention"]
    stored["model"].update(cbam=cbam, cbam_spatial=spatial)
    path = tmp_path / "old.pt"
    save_checkpoint(path, {"model": model.state_dict(), "config": stored, "num_classes": 0})
    with caplog.at_level(logging.WARNING):
        loaded, loaded_cfg, _ = load_model(path)  # load_state_dict is strict
    assert loaded_cfg.model.attention == kind and "model.attention" not in caplog.text  # quiet: not the user's keys
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x))


def test_shipped_configs_use_the_new_key():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs"
    for path in root.glob("*.yaml"):
        text = path.read_text()
        assert "cbam:" not in text and "cbam_spatial:" not in text, path


@pytest.mark.parametrize("kind", ["cbam", "se", "bam"])
def test_attention_lr_group_holds_exactly_the_attention_modules_parameters(kind):
    from retrieval.config import LossConfig, OptimConfig
    from retrieval.losses import RetrievalLoss
    from retrieval.optim import build_optimizer

    model = build_model(ModelConfig(backbone="resnet18", attention=kind, embedding_dim=16), 4, load_weights=False)
    expected = {id(p) for m in model.modules() if isinstance(m, (CBAM, BAM)) for p in m.parameters()}
    opt = build_optimizer(OptimConfig(lr=1e-3, attention_lr_mult=10), model, RetrievalLoss(LossConfig(), 4, 16))
    groups = {g["name"]: g for g in opt.param_groups}
    assert expected and {id(p) for p in groups["attention"]["params"]} == expected
