"""The combined loss equals PML's loss plus the weighted smoothed CE; proxies get their own lr."""
import pytest
import torch
from pytorch_metric_learning import losses, miners

from retrieval.config import LossConfig, OptimConfig
from retrieval.errors import ConfigError
from retrieval.losses import RetrievalLoss
from retrieval.optim import build_optimizer, build_scheduler, lr_factor


def _batch(classes=8, m=4, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.nn.functional.normalize(torch.randn(classes * m, dim, generator=g), dim=1)
    logits = torch.randn(classes * m, classes, generator=g)
    return emb, logits, torch.arange(classes).repeat_interleave(m)


def test_triplet_batch_hard_plus_cls_matches_references():
    emb, logits, labels = _batch()
    out = RetrievalLoss(LossConfig(name="triplet", miner="batch_hard", args={"margin": 0.1}, cls_weight=0.7,
                                   label_smoothing=0.1), 8, 16)(emb, logits, labels)
    ref_metric = losses.TripletMarginLoss(margin=0.1)(emb, labels, miners.BatchHardMiner()(emb, labels))
    ref_cls = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
    assert out.metric.item() == pytest.approx(ref_metric.item(), rel=1e-6)
    assert out.cls.item() == pytest.approx(ref_cls.item(), rel=1e-6)
    assert out.total.item() == pytest.approx(ref_metric.item() + 0.7 * ref_cls.item(), rel=1e-6)


def test_cross_batch_memory_mines_against_earlier_batches_like_pml():
    cfg = LossConfig(name="triplet", miner="batch_hard", args={"margin": 0.1}, xbm_memory=48)
    ours = RetrievalLoss(cfg, 8, 16)
    reference = losses.CrossBatchMemory(losses.TripletMarginLoss(margin=0.1), 16, memory_size=48,
                                        miner=miners.BatchHardMiner())
    plain = RetrievalLoss(LossConfig(name="triplet", miner="batch_hard", args={"margin": 0.1}), 8, 16)
    values = []
    for seed in range(3):  # 3 × 32 > 48: the memory wraps around
        emb, logits, labels = _batch(seed=seed)
        got = ours(emb, logits, labels).metric.item()
        assert got == pytest.approx(reference(emb, labels).item(), rel=1e-6)
        values.append((got, plain(emb, logits, labels).metric.item()))
    assert values[0][0] == pytest.approx(values[0][1], rel=1e-6)  # first batch: the memory holds only itself
    assert values[2][0] != pytest.approx(values[2][1], rel=1e-3)  # later: harder triplets from the memory
    state = ours.state_dict()
    assert state["xbm.embedding_memory"].shape == (48, 16) and ours.xbm.has_been_filled


def test_cross_batch_memory_is_refused_where_it_cannot_work():
    from retrieval.config import config_from_dict

    with pytest.raises(ConfigError, match="loss.xbm_memory: .*proxies"):
        config_from_dict({"loss": {"name": "proxy_anchor", "miner": "none", "xbm_memory": 64}})
    with pytest.raises(ConfigError, match="loss.xbm_memory: must be >= 0"):
        config_from_dict({"loss": {"xbm_memory": -1}})
    with pytest.raises(ConfigError, match="torchrun"):
        RetrievalLoss(LossConfig(xbm_memory=64), 8, 16, distributed=True)


def test_cls_weight_zero_or_no_logits_is_metric_only():
    emb, logits, labels = _batch()
    loss = RetrievalLoss(LossConfig(name="multi_similarity", miner="multi_similarity", cls_weight=0.0), 8, 16)
    assert loss(emb, logits, labels).total.item() == pytest.approx(loss(emb, None, labels).metric.item())


@pytest.mark.parametrize("name", ["proxy_anchor", "proxy_nca", "arcface"])
def test_proxy_losses_have_proxies_in_their_own_group(name):
    loss = RetrievalLoss(LossConfig(name=name, miner="none"), 8, 16)
    shapes = [tuple(p.shape) for p in loss.parameters()]
    assert shapes and all(s[0] in (8, 16) and 16 in s for s in shapes)
    assert set(loss.state_dict()) == {f"metric.{n}" for n, _ in loss.metric.named_parameters()}
    model = torch.nn.Linear(4, 16)
    opt = build_optimizer(OptimConfig(lr=1e-4, proxy_lr_mult=100), model, loss)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-4, 1e-2])
    emb, _, labels = _batch()
    emb.requires_grad_(True)
    loss(emb, None, labels).total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.parameters())


def test_proxy_loss_needs_two_classes():
    with pytest.raises(ConfigError, match="proxy_anchor"):
        RetrievalLoss(LossConfig(name="proxy_anchor"), 1, 16)


def test_schedules():
    cfg = OptimConfig(scheduler="step", step_epochs=[2, 4], gamma=0.1, warmup_epochs=1)
    assert lr_factor(0, cfg, 10, 6) == pytest.approx(0.1)  # warm-up: 1/10 at the first step
    assert lr_factor(9, cfg, 10, 6) == pytest.approx(1.0)
    assert lr_factor(20, cfg, 10, 6) == pytest.approx(0.1)
    assert lr_factor(45, cfg, 10, 6) == pytest.approx(0.01)
    cos = OptimConfig(scheduler="cosine")
    assert lr_factor(0, cos, 10, 2) == pytest.approx(1.0)
    assert lr_factor(10, cos, 10, 2) == pytest.approx(0.5)
    assert lr_factor(20, cos, 10, 2) == pytest.approx(0.0, abs=1e-9)
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(OptimConfig(name="sgd", lr=0.1), model, torch.nn.Module())
    sched = build_scheduler(cos, opt, 10, 2)
    for _ in range(10):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)


def test_cbam_parameters_get_their_own_lr_group_only_when_asked():
    from retrieval.config import ModelConfig
    from retrieval.models import build_model

    model = build_model(ModelConfig(backbone="resnet18", pretrained="none", attention="cbam", embedding_dim=16),
                        num_classes=4, load_weights=False)
    loss = RetrievalLoss(LossConfig(name="triplet"), 4, 16)
    names = {id(p): n for n, p in model.named_parameters()}
    opt = build_optimizer(OptimConfig(lr=1e-3, attention_lr_mult=10), model, loss)
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"model", "attention"} and groups["attention"]["lr"] == pytest.approx(1e-2)
    assert groups["model"]["lr"] == pytest.approx(1e-3)
    attention = {names[id(p)] for p in groups["attention"]["params"]}
    assert attention and all(".cbam." in n for n in attention)
    assert any(n.endswith("spatial.bn.weight") for n in attention)  # the gate that starts at 0
    counted = sum(len(g["params"]) for g in opt.param_groups)
    assert counted == sum(p.requires_grad for p in model.parameters())  # every trainable one in exactly one group
    plain = build_optimizer(OptimConfig(lr=1e-3), model, loss)
    assert [g["name"] for g in plain.param_groups] == ["model"]
