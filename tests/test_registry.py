"""Registries: every entry builds, the config's allowed values are the registry keys, every shipped config builds."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from retrieval.config import LossConfig, OptimConfig, choices, config_from_dict, load_config, to_dict
from retrieval.data.sources import SOURCES
from retrieval.errors import ConfigError
from retrieval.losses import LOSSES, MINERS, RetrievalLoss, build_miner, resolve_arguments
from retrieval.models import build_model
from retrieval.models.backbone import BACKBONES, RESNETS, build_backbone, build_resnet
from retrieval.models.cbam import ARRANGEMENTS, CBAM, POOLS
from retrieval.models.cgd import DESCRIPTORS, GlobalDescriptor
from retrieval.optim import OPTIMIZERS, SCHEDULES, build_optimizer, build_scheduler
from retrieval.registry import Registry

ROOT = Path(__file__).resolve().parents[1]


def test_config_choices_are_the_registry_keys():
    assert choices()["loss.name"] is LOSSES and choices()["loss.miner"] is MINERS
    assert choices()["optim.name"] is OPTIMIZERS and choices()["optim.scheduler"] is SCHEDULES
    assert choices()["model.backbone"] is BACKBONES and choices()["data.name"] is SOURCES
    assert choices()["model.cbam_pool"] is POOLS and choices()["model.cbam_arrangement"] is ARRANGEMENTS


def test_every_registry_key_is_a_config_key_written_once():
    """choices() lists each registry under the key it declares (Registry("loss.name", ...)): no second spelling."""
    assert all(key == allowed.key for key, allowed in choices().items() if isinstance(allowed, Registry))


def test_a_new_entry_is_a_valid_config_value():
    LOSSES.register("contrastive_test")(LOSSES["triplet"])
    try:
        cfg = load_config(None, ["loss.name=contrastive_test", "loss.args.margin=0.3"])
        assert cfg.loss.args["margin"] == 0.3
    finally:
        del LOSSES._entries["contrastive_test"]
    with pytest.raises(ConfigError, match="loss.name: 'contrastive_test' is not one of triplet"):
        load_config(None, ["loss.name=contrastive_test"])


def test_registry_refuses_a_name_twice_and_names_the_key():
    reg = Registry("x.kind", {"a": 1})
    with pytest.raises(ValueError, match="twice"):
        reg.register("a")(2)
    with pytest.raises(ConfigError, match="x.kind: 'b' is not one of a"):
        reg["b"]


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_builds_with_its_defaults(name):
    loss = RetrievalLoss(LossConfig(name=name, miner="none"), num_classes=4, embedding_dim=8)
    assert isinstance(loss.metric, LOSSES[name].cls)
    for arg, value in LOSSES[name].defaults.items():
        stored = np.degrees(loss.metric.margin) if (name, arg) == ("arcface", "margin") else getattr(loss.metric, arg)
        assert stored == pytest.approx(value), arg  # PML keeps ArcFace's margin in radians
    emb = torch.nn.functional.normalize(torch.randn(8, 8), dim=1)
    assert torch.isfinite(loss(emb, None, torch.arange(4).repeat(2)).total)


@pytest.mark.parametrize("name", list(MINERS))
def test_every_miner_builds(name):
    miner = build_miner(LossConfig(miner=name))
    assert (miner is None) == (MINERS[name].cls is None)


def test_loss_args_are_checked_against_the_chosen_loss():
    with pytest.raises(ConfigError, match=r"loss.args.alpha: not an argument .*allowed: margin, smooth_loss, swap"):
        load_config(None, ["loss.name=triplet", "loss.args.alpha=3"])
    with pytest.raises(ConfigError, match="loss.args.margin: must be >= 0"):
        load_config(None, ["loss.args.margin=-1"])
    with pytest.raises(ConfigError, match="loss.args.alpha: expected float"):
        load_config(None, ["loss.name=proxy_anchor", "loss.args.alpha=big"])
    cfg = load_config(None, ["loss.name=proxy_anchor", "loss.args.alpha=16"])
    assert cfg.loss.args == {"margin": 0.1, "alpha": 16.0}  # the resolved config says every value used


def test_old_loss_keys_migrate_with_their_meaning(caplog):
    cfg = load_config(None, ["loss.name=arcface", "loss.margin=0.5", "loss.alpha=30"])
    assert cfg.loss.args == {"margin": 0.5, "scale": 30.0}
    assert "loss.args" in caplog.text
    ms = load_config(None, ["loss.name=multi_similarity", "loss.ms_beta=40"])
    assert ms.loss.args == {"alpha": 2.0, "beta": 40.0, "base": 0.5}
    semi = load_config(None, ["loss.name=triplet", "loss.miner=semi_hard", "loss.margin=0.2"])
    assert semi.loss.args["margin"] == 0.2 and semi.loss.miner_args == {"margin": 0.2}
    with pytest.raises(ConfigError, match="loss.alpha: does not apply to loss.name=triplet"):
        load_config(None, ["loss.alpha=5"])


def test_semi_hard_miner_follows_the_triplet_margin_unless_told():
    assert load_config(None, ["loss.miner=semi_hard", "loss.args.margin=0.3"]).loss.miner_args == {"margin": 0.3}
    own = load_config(None, ["loss.miner=semi_hard", "loss.args.margin=0.3", "loss.miner_args.margin=0.05"])
    assert own.loss.miner_args == {"margin": 0.05}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_and_schedule_builds(name):
    model = torch.nn.Linear(2, 2)
    for schedule in SCHEDULES:
        cfg = OptimConfig(name=name, scheduler=schedule, lr=0.1)
        opt = build_optimizer(cfg, model, torch.nn.Module())
        sched = build_scheduler(cfg, opt, steps_per_epoch=2, epochs=2)
        opt.step()
        sched.step()
        assert 0 <= opt.param_groups[0]["lr"] <= 0.1


def test_every_backbone_descriptor_pool_and_arrangement_builds():
    for arch in BACKBONES:
        if arch in RESNETS:
            assert build_resnet(arch).layer1[0].__class__ is BACKBONES[arch][0]
        else:  # EfficientNet-Lite: the architecture package alone, no weights
            assert build_backbone(arch).eval()(torch.rand(1, 3, 64, 64)).shape[1] == 1280
    feats = torch.rand(2, 8, 4, 4)
    assert all(GlobalDescriptor(kind)(feats).shape == (2, 8) for kind in DESCRIPTORS)
    for pool in POOLS:
        for arrangement in ARRANGEMENTS:
            assert CBAM(8, reduction=2, pool=pool, arrangement=arrangement)(feats).shape == feats.shape


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_builds_into_objects(path):
    cfg = load_config(path)
    model = build_model(cfg.model, num_classes=7, load_weights=False)  # ImageNet weights cannot be fetched here
    loss = RetrievalLoss(cfg.loss, num_classes=7, embedding_dim=cfg.model.embedding_dim)
    optimizer = build_optimizer(cfg.optim, model, loss)
    build_scheduler(cfg.optim, optimizer, steps_per_epoch=3, epochs=cfg.train.epochs)
    assert model.embedding_dim == cfg.model.embedding_dim and model.head.descriptors == cfg.model.descriptors
    assert isinstance(loss.metric, LOSSES[cfg.loss.name].cls)
    assert cfg.data.name in SOURCES
    if cfg.loss.name == "proxy_anchor":
        assert isinstance(loss.metric, pml_losses.ProxyAnchorLoss) and len(optimizer.param_groups) == 2


def test_loss_arguments_follow_the_same_type_rules_as_config_keys(tmp_path):
    """YAML 1.1 reads 1e-4 (no dot) as a string: a loss argument takes it as a float, as optim.lr does."""
    cfg = load_config(None, ["optim.lr=1e-4", "loss.args.margin=1e-4", "loss.miner=semi_hard",
                             "loss.miner_args.margin=2e-3"])
    assert cfg.optim.lr == cfg.loss.args["margin"] == pytest.approx(1e-4) and isinstance(cfg.loss.args["margin"], float)
    assert cfg.loss.miner_args == {"margin": pytest.approx(2e-3)}
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-4\nloss:\n  args: {margin: 1e-4}\n")
    assert load_config(path).loss.args["margin"] == load_config(path).optim.lr == pytest.approx(1e-4)
    for bad in ("loss.args.margin=big", "optim.lr=big"):
        with pytest.raises(ConfigError, match=f"{bad.split('=')[0]}: expected float, got 'big'"):
            load_config(None, [bad])
    with pytest.raises(ConfigError, match="loss.args.margin: must be a finite number"):
        load_config(None, ["loss.args.margin=.nan"])


def test_loss_arguments_are_resolved_once_and_building_keeps_them():
    cfg = load_config(None, ["loss.name=proxy_anchor", "loss.args.alpha=16"]).loss
    assert resolve_arguments(cfg) == cfg  # a validated config is already resolved
    loss = RetrievalLoss(LossConfig(name="proxy_anchor", args={"alpha": 16}), num_classes=4, embedding_dim=8)
    assert (loss.metric.alpha, loss.metric.margin) == (16.0, 0.1)  # an unvalidated one resolves the same way


def test_proxy_lr_mult_moved_to_optim(caplog, tmp_path):
    cfg = load_config(None, ["loss.name=proxy_anchor", "optim.proxy_lr_mult=10"])
    assert cfg.optim.proxy_lr_mult == 10.0 and not hasattr(cfg.loss, "proxy_lr_mult")
    path = tmp_path / "old.yaml"
    path.write_text("loss:\n  name: proxy_anchor\n  proxy_lr_mult: 50\n")
    with caplog.at_level(logging.WARNING, logger="retrieval.config"):
        old = load_config(path)
    assert old.optim.proxy_lr_mult == 50.0 and "loss.proxy_lr_mult is read as optim.proxy_lr_mult" in caplog.text
    assert load_config(None, ["loss.proxy_lr_mult=20"]).optim.proxy_lr_mult == 20.0
    with pytest.raises(ConfigError, match="loss.proxy_lr_mult=50 and optim.proxy_lr_mult=20 both set"):
        load_config(path, ["optim.proxy_lr_mult=20"])
    with pytest.raises(ConfigError, match="optim.proxy_lr_mult: must be > 0"):
        load_config(None, ["optim.proxy_lr_mult=0"])


def test_a_stored_config_with_the_old_proxy_key_loads_quietly_and_takes_an_override(caplog):
    stored = to_dict(load_config(None, ["loss.name=proxy_anchor"]))
    stored["loss"]["proxy_lr_mult"] = stored["optim"].pop("proxy_lr_mult") / 4  # what an earlier version saved
    with caplog.at_level(logging.DEBUG, logger="retrieval.config"):
        cfg = config_from_dict(stored, stored=True)
    assert cfg.optim.proxy_lr_mult == 25.0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert config_from_dict(stored, ["optim.proxy_lr_mult=7"], stored=True).optim.proxy_lr_mult == 7.0
