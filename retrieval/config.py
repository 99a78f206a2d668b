"""Typed configuration: YAML → dataclasses, ``section.key=value`` overrides, validation.

The sections themselves (a dataclass each, a comment on each field) are in ``schema.py``,
below everything. ``load_config`` reads a YAML file, applies command-line overrides, checks
every key and type, and runs the cross-field checks against the registries (``choices``);
every problem is a :class:`ConfigError` naming the key, the value and what is allowed. Keys of
earlier versions are read and moved (``migrate_*``).
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import logging
import typing
from pathlib import Path
from typing import Any

import yaml

from .coerce import coerce
from .errors import ConfigError
from .registry import Registry
# The sections are also importable from here (``from retrieval.config import ModelConfig``), as before
# they moved to schema.py; modules of the package import them from schema.
from .schema import (PRECISIONS, TRAIN_CROPS, Config, DataConfig, EvalConfig, LossConfig, ModelConfig, OptimConfig,  # noqa: F401
                     RerankConfig, TrainConfig)

log = logging.getLogger(__name__)


@functools.cache
def choices() -> dict[str, Registry | tuple[str, ...]]:
    """Config key → its allowed values: every registry under its own key, plus the closed sets.

    The registries hold torch, PML and torchvision classes: they are imported on the first
    validation, so reading the section types (``schema``) or this module stays light.
    """
    from .data.sources import SOURCES
    from .losses import LOSSES, MINERS
    from .models.attention import ATTENTIONS
    from .models.backbone import BACKBONES
    from .models.cbam import ARRANGEMENTS, INITS, POOLS
    from .models.cgd import CLASSIFIER_INPUTS, METRIC_INPUTS
    from .optim import OPTIMIZERS, SCHEDULES
    from .rerank.spec import RERANKERS

    registries = (SOURCES, BACKBONES, ATTENTIONS, ARRANGEMENTS, POOLS, LOSSES, MINERS, OPTIMIZERS, SCHEDULES,
                  RERANKERS)
    return {**{r.key: r for r in registries}, "data.split": ("classes", "official"),
            "data.train_crop": TRAIN_CROPS,
            "model.cbam_init": ("auto", *INITS), "model.metric_on": METRIC_INPUTS,
            "model.classifier_on": CLASSIFIER_INPUTS, "train.precision": PRECISIONS}


# Keys whose value must be > 0.
POSITIVE = (
    "data.image_size", "data.resize", "data.batch_size", "data.synthetic_classes",
    "data.synthetic_per_class", "data.synthetic_size", "model.cbam_reduction",
    "model.embedding_dim", "model.gem_p", "model.temperature", "optim.lr", "optim.gamma", "optim.attention_lr_mult",
    "optim.proxy_lr_mult", "train.epochs", "eval.batch_size", "eval.chunk_size",
)

# Keys whose value must be >= 0.
NON_NEGATIVE = (
    "data.num_workers", "data.val_classes", "loss.xbm_memory", "optim.weight_decay", "optim.momentum", "optim.warmup_epochs",
    "loss.cls_weight", "train.seed", "train.steps_per_epoch", "train.eval_every", "train.grad_clip",
)

# Sections only training reads. A checkpoint opened to embed, search, serve or evaluate is not
# checked against them (a loss a later version renamed must not stop a model from being served);
# a run that resumes checks them.
TRAINING_SECTIONS = ("loss", "optim")

# train.device: auto, cpu, cuda or cuda:N (whether this machine has it is checked when the run starts).
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _suggest(key: str, valid: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
    return f"{hint} Valid keys: {', '.join(valid)}."


def _build(cls: type, raw: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"unknown key '{full}'.{_suggest(str(key), names, f'{prefix}.' if prefix else '')}")
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = _build(hints[key], value, full)
        else:
            kwargs[key] = coerce(full, value, hints[key])
    return cls(**kwargs)


def _field_type(section: str, key: str) -> Any:
    hints = typing.get_type_hints(typing.get_type_hints(Config)[section])
    return hints.get(key)


def _is_list(tp: Any) -> bool:
    return typing.get_origin(tp) is list or any(typing.get_origin(a) is list for a in typing.get_args(tp))


def _parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` (or ``section.key.arg=value`` for a mapping of arguments) → (parts, YAML value)."""
    usage = f"override '{text}': expected section.key=value (e.g. optim.lr=3e-4 or loss.args.margin=0.2)"
    if "=" not in text:
        raise ConfigError(usage)
    key, value = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) not in (2, 3) or not all(parts):
        raise ConfigError(usage)
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return parts, parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Set ``section.key=value`` items in the raw mapping (values parsed as YAML scalars)."""
    sections = [f.name for f in dataclasses.fields(Config)]
    for text in overrides:
        parts, value = _parse_override(text)
        section, key = parts[0], parts[1]
        if section not in sections:
            raise ConfigError(f"override '{text}': unknown section '{section}'.{_suggest(section, sections)}")
        node = raw.setdefault(section, {}) or {}
        raw[section] = node
        tp = _field_type(section, key)
        if len(parts) == 3:
            if tp is None or typing.get_origin(tp) is not dict:
                raise ConfigError(f"override '{text}': {section}.{key} is not a mapping of arguments; "
                                  f"expected section.key=value")
            node[key] = {**(node.get(key) or {}), parts[2]: value}
            continue
        if isinstance(value, str) and tp is not None and _is_list(tp):
            value = yaml.safe_load(f"[{value}]")  # allow eval.recall_k=1,10,100
        node[key] = value
    return raw


def _check_choice(key: str, value: str) -> None:
    allowed = choices()[key]
    if isinstance(allowed, Registry):
        allowed.check(value)
    elif value not in allowed:
        raise ConfigError(f"{key}: '{value}' is not one of {', '.join(allowed)}")


def _get(cfg: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def _validate_model(m: ModelConfig) -> None:
    from .models.cgd import parse_descriptors
    from .models.efficientnet_lite import LITE_MODELS, check_lite

    m.descriptors = parse_descriptors(m.descriptors)
    if m.embedding_dim % len(m.descriptors):
        raise ConfigError(
            f"model.embedding_dim: {m.embedding_dim} is not divisible by the {len(m.descriptors)} descriptors "
            f"'{m.descriptors}'; use a multiple of {len(m.descriptors)}")
    if m.last_stride not in (1, 2):
        raise ConfigError(f"model.last_stride: must be 1 or 2, got {m.last_stride}")
    if m.backbone in LITE_MODELS:
        check_lite(m.backbone, m.attention != "none", m.last_stride)
    if m.cbam_kernel % 2 == 0:
        raise ConfigError(f"model.cbam_kernel: must be odd (3 or 7 in CBAM), got {m.cbam_kernel}")
    for key in ("metric_on", "classifier_on", "embedding_bn_scale"):
        if getattr(m, key) != ModelConfig.__dataclass_fields__[key].default and not m.embedding_bn:
            raise ConfigError(f"model.{key}: '{getattr(m, key)}' is about the centring BN; it needs "
                              "model.embedding_bn=true")


def _validate_data(d: DataConfig) -> None:
    if d.m_per_class < 1 or d.batch_size % d.m_per_class:
        raise ConfigError(f"data.batch_size: {d.batch_size} is not a multiple of data.m_per_class={d.m_per_class}")
    if len(d.crop_scale) != 2 or not 0 < d.crop_scale[0] <= d.crop_scale[1] <= 1:
        raise ConfigError(f"data.crop_scale: expected [low, high] with 0 < low <= high <= 1 (fractions of the "
                          f"image's area), got {d.crop_scale}")
    if d.resize < d.image_size:
        raise ConfigError(f"data.resize: {d.resize} is smaller than data.image_size={d.image_size}")
    for key in ("train_classes", "test_classes"):
        rng = getattr(d, key)
        if rng is not None and (len(rng) != 2 or rng[0] > rng[1]):
            raise ConfigError(f"data.{key}: expected [first, last] with first <= last, got {rng}")
    if not str(d.root).strip():
        raise ConfigError("data.root: empty; expected the data set's folder (for data.name=csv: the CSV file)")
    if d.name == "synthetic" and d.synthetic_classes < 4:
        raise ConfigError(f"data.synthetic_classes: {d.synthetic_classes} is too few; half the classes train and half "
                          "test, and each half needs at least 2 (use >= 4)")


def _validate_loss(loss: LossConfig) -> LossConfig:
    from .losses import LOSSES, resolve_arguments

    loss = resolve_arguments(loss)
    if loss.xbm_memory and LOSSES[loss.name].proxies:
        raise ConfigError(f"loss.xbm_memory: a cross-batch memory mines pairs and triplets; loss.name={loss.name} "
                          "learns proxies instead (use triplet or multi_similarity, or loss.xbm_memory=0)")
    if not 0 <= loss.label_smoothing < 1:
        raise ConfigError(f"loss.label_smoothing: must be in [0, 1), got {loss.label_smoothing}")
    return loss


def validate(cfg: Config, inference: bool = False) -> Config:
    """Check values and their combinations; raise ConfigError naming the key.

    Resolves in place: descriptors upper-cased, ``loss.args`` / ``loss.miner_args`` completed
    with the chosen loss's and miner's defaults (so the saved config says every value used).
    inference: leave the TRAINING_SECTIONS unchecked (their types are still checked on reading).
    """
    checked = [f.name for f in dataclasses.fields(Config) if not (inference and f.name in TRAINING_SECTIONS)]
    for key in choices():
        if key.split(".")[0] in checked:
            _check_choice(key, _get(cfg, key))
    for key in (k for k in POSITIVE if k.split(".")[0] in checked):
        if _get(cfg, key) <= 0:
            raise ConfigError(f"{key}: must be > 0, got {_get(cfg, key)!r}")
    for key in (k for k in NON_NEGATIVE if k.split(".")[0] in checked):
        if _get(cfg, key) < 0:
            raise ConfigError(f"{key}: must be >= 0, got {_get(cfg, key)!r}")
    if not _DEVICE.match(cfg.train.device):
        raise ConfigError(f"train.device: '{cfg.train.device}' is not one of auto, cpu, cuda, cuda:N")
    _validate_model(cfg.model)
    _validate_data(cfg.data)
    if "loss" in checked:
        cfg.loss = _validate_loss(cfg.loss)
    cfg.rerank.args = choices()["rerank.name"][cfg.rerank.name].resolve(cfg.rerank.args, "rerank.args.")
    if not cfg.eval.recall_k or min(cfg.eval.recall_k) < 1:
        raise ConfigError(f"eval.recall_k: expected a non-empty list of K >= 1, got {cfg.eval.recall_k}")
    return cfg


# Loss keys of earlier versions, each of which meant something different per loss: loss.name →
# {old key: argument}. Their defaults then (margin 0.1, alpha 32, ms_* 2 / 50 / 0.5) are what
# every saved run config holds; a key that does not apply to its loss is dropped at that value.
LEGACY_LOSS_KEYS = {
    "triplet": {"margin": "margin"},
    "proxy_anchor": {"margin": "margin", "alpha": "alpha"},
    "proxy_nca": {"alpha": "softmax_scale"},
    "multi_similarity": {"ms_alpha": "alpha", "ms_beta": "beta", "ms_base": "base"},
    "arcface": {"margin": "margin", "alpha": "scale"},
}
LEGACY_DEFAULTS = {"margin": 0.1, "alpha": 32.0, "ms_alpha": 2.0, "ms_beta": 50.0, "ms_base": 0.5}


def migrate_loss(raw: dict, quiet: bool = False) -> dict:
    """A raw ``loss`` section with the old per-loss keys (margin, alpha, ms_*) moved into ``args``."""
    from .losses import LOSSES

    old = [k for k in LEGACY_DEFAULTS if k in raw]
    if not old:
        return raw
    raw = dict(raw)
    name = raw.get("name", LossConfig.name)
    mapping = LEGACY_LOSS_KEYS.get(name, {})
    args = dict(raw.get("args") or {})
    for key in old:
        value = raw.pop(key)
        target = mapping.get(key)
        if target is None and key == "margin" and raw.get("miner") == "semi_hard":
            raw["miner_args"] = {"margin": value, **(raw.get("miner_args") or {})}
            target = "(miner) margin"
        elif target is None:
            if value != LEGACY_DEFAULTS[key]:
                raise ConfigError(f"loss.{key}: does not apply to loss.name={name} "
                                  f"(its arguments: {', '.join(LOSSES[name].defaults) if name in LOSSES else '?'})")
            continue
        elif target in args and args[target] != value:
            raise ConfigError(f"loss.{key}={value} and loss.args.{target}={args[target]} both set the same argument "
                              f"of loss.name={name}; keep loss.args.{target}")
        else:
            args[target] = value
        (log.debug if quiet else log.warning)(
            "loss.%s=%s is read as loss.args.%s for loss.name=%s; write loss.args (the old keys meant a "
            "different thing for each loss)", key, value, target, name)
    raw["args"] = args
    return raw


def _legacy_attention(raw: dict) -> str:
    """The model.attention value the old keys ``cbam`` / ``cbam_spatial`` meant (both default true)."""
    for key in ("cbam", "cbam_spatial"):
        if key in raw and not isinstance(raw[key], bool):
            raise ConfigError(f"model.{key}: expected bool, got {raw[key]!r} ({type(raw[key]).__name__}); "
                              "it is replaced by model.attention (cbam | bam | se | none)")
    if not raw.get("cbam", True):
        return "none"
    return "cbam" if raw.get("cbam_spatial", True) else "se"


def migrate_model(raw: dict, quiet: bool = False) -> dict:
    """A raw ``model`` section with the old keys read: ``cbam: false`` → attention none, ``cbam_spatial: false`` → se."""
    old = [k for k in ("cbam", "cbam_spatial") if k in raw]
    if not old:
        return raw
    raw = dict(raw)
    implied = _legacy_attention(raw)
    for key in old:
        raw.pop(key)
    chosen = raw.get("attention")
    if chosen is not None and implied != "cbam" and chosen != implied:
        raise ConfigError(f"model.{' and model.'.join(old)} (meaning model.attention={implied}) contradict "
                          f"model.attention={chosen}; keep model.attention")
    if chosen is None:
        raw["attention"] = implied
    (log.debug if quiet else log.warning)(
        "model.%s is replaced by model.attention; read as model.attention=%s (write that instead)",
        " and model.".join(old), raw["attention"])
    return raw


# Keys that moved to another section: old (section, key) → new (section, key).
MOVED_KEYS = {
    ("loss", "proxy_lr_mult"): ("optim", "proxy_lr_mult"),  # a parameter group's lr, like optim.attention_lr_mult
}


def migrate_moved(raw: dict, quiet: bool = False) -> dict:
    """A raw config with the keys of ``MOVED_KEYS`` read at their new place (the old key logged)."""
    for (old_section, old_key), (section, key) in MOVED_KEYS.items():
        source, target = raw.get(old_section), raw.get(section)
        if not isinstance(source, dict) or old_key not in source or not isinstance(target, (dict, type(None))):
            continue
        source, target = dict(source), dict(target or {})
        value = source.pop(old_key)
        if key in target and target[key] != value:
            raise ConfigError(f"{old_section}.{old_key}={value} and {section}.{key}={target[key]} both set "
                              f"{section}.{key}; keep {section}.{key}")
        target[key] = value
        raw = {**raw, old_section: source, section: target}
        (log.debug if quiet else log.warning)("%s.%s is read as %s.%s (write that instead)", old_section, old_key,
                                              section, key)
    return raw


# Keys added after earlier versions stored resolved configs (checkpoints, index manifests), with
# the value those versions used: a stored config without one rebuilds the model it describes.
STORED_DEFAULTS = {("model", "embedding_bn"): False, ("optim", "attention_lr_mult"): 1.0}


def config_from_dict(raw: dict, overrides: list[str] | None = None, stored: bool = False,
                     inference: bool = False) -> Config:
    """Build and validate a Config from a nested mapping plus overrides.

    inference: the config of a model opened to embed, search, serve or evaluate; the training-only
    sections are not checked against this version's registries (``validate``).

    stored: ``raw`` is a resolved config the library saved (checkpoint, run folder): keys it
    lacks take their value of the version that wrote it (STORED_DEFAULTS), its moved keys are
    read at their new place before the overrides apply, and old keys (``migrate_*``) are logged
    at debug level, since the user did not write them.
    """
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in (raw or {}).items()}
    if stored:
        for (section, key), value in STORED_DEFAULTS.items():
            if isinstance(raw.get(section), dict):
                raw[section].setdefault(key, value)
        raw = migrate_moved(raw, quiet=True)  # so that an override of the new key replaces the stored value
    raw = apply_overrides(raw, list(overrides or []))
    raw = migrate_moved(raw, quiet=stored)
    if isinstance(raw.get("loss"), dict):
        raw["loss"] = migrate_loss(raw["loss"], quiet=stored)
    if isinstance(raw.get("model"), dict):
        raw["model"] = migrate_model(raw["model"], quiet=stored)
    return validate(_build(Config, raw, ""), inference)


# Mappings of a choice's arguments are replaced, not merged, by a file that inherits them:
# another loss has other arguments.
_REPLACED = {"args", "miner_args"}


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        deep = isinstance(value, dict) and isinstance(out.get(key), dict) and key not in _REPLACED
        out[key] = _merge(out[key], value) if deep else value
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Read a config file; ``base: other.yaml`` (relative to the file) is read first and overlaid."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start}); expected a YAML "
                          "config") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if raw is None:
        raise ConfigError(f"{path}: the file is empty; a config needs at least one section (data, model, ...)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data, model, ...), got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    return _merge(_read_yaml(path.parent / str(base), seen + (path.resolve(),)), raw)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (None = defaults; ``base: file.yaml`` inherits), apply overrides, validate."""
    raw = _read_yaml(Path(path)) if path is not None else {}
    try:
        return config_from_dict(raw, overrides)
    except ConfigError as err:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{err}") from None


def to_dict(cfg: Config) -> dict:
    """Plain nested dict (YAML/JSON/checkpoint safe)."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config atomically."""
    from .files import atomic_write_text

    atomic_write_text(Path(path), to_yaml(cfg))
