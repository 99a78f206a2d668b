"""Typed configuration: YAML → dataclasses, ``section.key=value`` overrides, validation.

Every section is a dataclass with a comment on each field. ``load_config`` reads a
YAML file, applies command-line overrides, checks every key and type, and runs the
cross-field checks; every problem is a :class:`ConfigError` naming the key, the value
and what is allowed.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data.sources import SOURCES
from .errors import ConfigError
from .losses import LOSSES, MINERS, miner_args
from .models.attention import ATTENTIONS
from .models.backbone import BACKBONES
from .models.cbam import ARRANGEMENTS, INITS, POOLS
from .models.cgd import parse_descriptors
from .optim import OPTIMIZERS, SCHEDULES
from .registry import Registry
from .rerank.spec import RERANKERS
from .runtime import PRECISIONS

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    name: str = "synthetic"  # a data.sources.SOURCES key: synthetic | cub | cars | sop | inshop | folder | csv
    root: str = "data/synthetic"  # dataset folder (for csv: the CSV file)
    split: str = "classes"  # classes: metric-learning split (disjoint classes); official: CUB's image-level train_test_split.txt
    train_classes: list[int] | None = None  # [first, last] class ids for training; None = the dataset's standard split
    test_classes: list[int] | None = None  # [first, last] class ids for testing; None = the classes not trained on
    val_classes: int = 0  # training classes held out to choose best.pt on (0 = none: no best.pt)
    crop: bool = False  # crop to bounding boxes (CUB, Cars); CGD's published numbers use crops
    image_size: int = 224  # side of the network input (CGD: 224)
    resize: int = 252  # train: resize to resize×resize, then random crop image_size (CGD: 252 → 224)
    batch_size: int = 128  # images per step (CGD: 128)
    m_per_class: int = 4  # images of each class in a batch (CGD: 32 classes × 4)
    num_workers: int = 2  # data-loader worker processes
    cache: bool = False  # keep decoded images at training resolution in memory
    synthetic_classes: int = 120  # synthetic only: number of classes (half train, half test)
    synthetic_per_class: int = 24  # synthetic only: images per class
    synthetic_size: int = 80  # synthetic only: side of the generated images in pixels


@dataclass
class ModelConfig:
    backbone: str = "resnet50"  # a models.backbone.BACKBONES key: resnet18 | resnet34 | resnet50 | resnet101
    pretrained: str = "none"  # none | imagenet | path to a torchvision-format state dict
    attention: str = "cbam"  # models.attention.ATTENTIONS: cbam (every block) | bam (after stages 1-3) | se | none
    cbam_reduction: int = 16  # channel reduction r of the attention MLPs (CBAM §3.1, BAM §3: 16)
    cbam_kernel: int = 7  # spatial-gate conv kernel (CBAM Table 2: 7 beats 3)
    cbam_arrangement: str = "channel_spatial"  # channel_spatial | spatial_channel | parallel (CBAM Table 3)
    cbam_pool: str = "avg_max"  # pooling inside the gates: avg | max | avg_max (CBAM Tables 1-2)
    cbam_init: str = "auto"  # attention init (CBAM, SE, BAM): auto (identity if pretrained, else paper) | identity | paper
    last_stride: int = 1  # 1: no down-sampling in the last stage (CGD: 14×14 map at 224 px); 2: torchvision's
    descriptors: str = "SG"  # CGD global descriptors over S (SPoC), M (MAC), G (GeM); the first feeds the classifier
    embedding_dim: int = 1536  # total embedding size, split evenly over the descriptors (CGD: 1536)
    gem_p: float = 3.0  # GeM exponent (CGD: 3)
    gem_learnable: bool = False  # learn the GeM exponent
    temperature: float = 0.5  # classifier logits divided by τ (CGD §3.3: 0.5)
    embedding_bn: bool = True  # centre each branch's projection (BN, shift fixed at 0) before its L2 norm; docs/training.md


@dataclass
class LossConfig:
    name: str = "triplet"  # a losses.LOSSES key: triplet | proxy_anchor | proxy_nca | multi_similarity | arcface
    args: dict[str, Any] = field(default_factory=dict)  # the loss's arguments (e.g. {margin: 0.1}); LOSSES lists them and their defaults
    miner: str = "batch_hard"  # a losses.MINERS key: batch_hard | semi_hard | multi_similarity | all | none
    miner_args: dict[str, Any] = field(default_factory=dict)  # the miner's arguments (semi_hard: margin, default the loss's)
    proxy_lr_mult: float = 100.0  # learning-rate multiplier of proxies (Proxy-Anchor: 100)
    cls_weight: float = 1.0  # weight of CGD's auxiliary classification loss (0 disables it)
    label_smoothing: float = 0.1  # ε of the classification loss (CGD: 0.1)


@dataclass
class OptimConfig:
    name: str = "adam"  # an optim.OPTIMIZERS key: adam | adamw | sgd
    lr: float = 1e-4  # base learning rate (CGD: 1e-4)
    weight_decay: float = 0.0  # L2 / decoupled weight decay
    momentum: float = 0.9  # SGD momentum
    scheduler: str = "step"  # an optim.SCHEDULES key: none | step | cosine
    step_epochs: list[int] = field(default_factory=lambda: [12, 24])  # step: epochs where lr is multiplied by gamma
    gamma: float = 0.1  # step: multiplier
    warmup_epochs: float = 0.0  # linear warm-up length in epochs
    attention_lr_mult: float = 1.0  # lr multiplier of the CBAM/SE/BAM parameters (from scratch: 10, docs/training.md)


@dataclass
class TrainConfig:
    epochs: int = 20  # training epochs
    out_dir: str = "runs/run"  # run folder: config.yaml, metrics.csv, last.pt, best.pt, train.log
    seed: int = 0  # seed of python, numpy, torch and data-loader workers
    precision: str = "auto"  # auto (bf16 on CPUs that support it, fp16 AMP on CUDA) | fp32 | bf16 | fp16
    channels_last: bool = True  # NHWC memory format (faster convolutions on CPU and tensor cores)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    freeze_bn: bool = False  # keep BatchNorm statistics fixed (CGD and Proxy-Anchor do with pretrained weights)
    steps_per_epoch: int = 0  # 0 = one pass over the sampler; >0 caps an epoch (quick runs)
    eval_every: int = 1  # evaluate every N epochs (0 = only at the end)
    grad_clip: float = 0.0  # clip gradient norm (0 = off)
    compile: bool = False  # torch.compile the training forward (retrieval.execution; falls back to eager with a warning)


@dataclass
class EvalConfig:
    recall_k: list[int] = field(default_factory=lambda: [1, 2, 4, 8])  # K of Recall@K (CUB/Cars: 1,2,4,8)
    batch_size: int = 64  # images per forward pass when embedding
    chunk_size: int = 1024  # queries per FAISS search chunk (bounds memory)
    map_at_r: bool = True  # also compute MAP@R and R-precision


@dataclass
class RerankConfig:
    name: str = "none"  # a rerank.RERANKERS key: none | aqe | dba | dba_aqe | kreciprocal (docs/reranking.md)
    args: dict[str, Any] = field(default_factory=dict)  # the method's arguments (e.g. {n: 2, alpha: 3.0}); choose them on val classes


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    rerank: RerankConfig = field(default_factory=RerankConfig)


# Keys whose allowed values are a registry's keys (or a closed set): checked by ``validate``.
CHOICES: dict[str, Registry | tuple[str, ...]] = {
    "data.name": SOURCES,
    "data.split": ("classes", "official"),
    "model.backbone": BACKBONES,
    "model.attention": ATTENTIONS,
    "model.cbam_arrangement": ARRANGEMENTS,
    "model.cbam_pool": POOLS,
    "model.cbam_init": ("auto", *INITS),
    "loss.name": LOSSES,
    "loss.miner": MINERS,
    "optim.name": OPTIMIZERS,
    "optim.scheduler": SCHEDULES,
    "train.precision": PRECISIONS,
    "rerank.name": RERANKERS,
}

# Keys whose value must be > 0.
POSITIVE = (
    "data.image_size", "data.resize", "data.batch_size", "data.synthetic_classes",
    "data.synthetic_per_class", "data.synthetic_size", "model.cbam_reduction",
    "model.embedding_dim", "model.gem_p", "model.temperature", "optim.lr", "optim.gamma", "optim.attention_lr_mult",
    "loss.proxy_lr_mult", "train.epochs", "eval.batch_size", "eval.chunk_size",
)

# Keys whose value must be >= 0.
NON_NEGATIVE = (
    "data.num_workers", "data.val_classes", "optim.weight_decay", "optim.momentum", "optim.warmup_epochs",
    "loss.cls_weight", "train.seed", "train.steps_per_epoch", "train.eval_every", "train.grad_clip",
)

# train.device: auto, cpu, cuda or cuda:N (whether this machine has it is checked when the run starts).
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _suggest(key: str, valid: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
    return f"{hint} Valid keys: {', '.join(valid)}."


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; int → float and "1e-4" → float are the only conversions."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {_type_name(args[0])}, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if origin is dict:  # per-choice arguments: their names and types are checked by the registry entry
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of arguments (e.g. {{margin: 0.1}}), got {value!r}")
        return {str(k): v for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):
                raise ConfigError(f"{key}: must be a finite number, got {value!r}")
            return number
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


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
            kwargs[key] = _coerce(full, value, hints[key])
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
    allowed = CHOICES[key]
    if isinstance(allowed, Registry):
        allowed.check(value)
    elif value not in allowed:
        raise ConfigError(f"{key}: '{value}' is not one of {', '.join(allowed)}")


def _get(cfg: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def _validate_model(m: ModelConfig) -> None:
    m.descriptors = parse_descriptors(m.descriptors)
    if m.embedding_dim % len(m.descriptors):
        raise ConfigError(
            f"model.embedding_dim: {m.embedding_dim} is not divisible by the {len(m.descriptors)} descriptors "
            f"'{m.descriptors}'; use a multiple of {len(m.descriptors)}")
    if m.last_stride not in (1, 2):
        raise ConfigError(f"model.last_stride: must be 1 or 2, got {m.last_stride}")
    if m.cbam_kernel % 2 == 0:
        raise ConfigError(f"model.cbam_kernel: must be odd (3 or 7 in CBAM), got {m.cbam_kernel}")


def _validate_data(d: DataConfig) -> None:
    if d.m_per_class < 1 or d.batch_size % d.m_per_class:
        raise ConfigError(f"data.batch_size: {d.batch_size} is not a multiple of data.m_per_class={d.m_per_class}")
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


def _validate_loss(loss: LossConfig) -> None:
    loss.args = LOSSES[loss.name].resolve(loss.args, "loss.args")
    loss.miner_args = miner_args(loss)
    if not 0 <= loss.label_smoothing < 1:
        raise ConfigError(f"loss.label_smoothing: must be in [0, 1), got {loss.label_smoothing}")


def validate(cfg: Config) -> Config:
    """Check values and their combinations; raise ConfigError naming the key.

    Resolves in place: descriptors upper-cased, ``loss.args`` / ``loss.miner_args`` completed
    with the chosen loss's and miner's defaults (so the saved config says every value used).
    """
    for key in CHOICES:
        _check_choice(key, _get(cfg, key))
    for key in POSITIVE:
        if _get(cfg, key) <= 0:
            raise ConfigError(f"{key}: must be > 0, got {_get(cfg, key)!r}")
    for key in NON_NEGATIVE:
        if _get(cfg, key) < 0:
            raise ConfigError(f"{key}: must be >= 0, got {_get(cfg, key)!r}")
    if not _DEVICE.match(cfg.train.device):
        raise ConfigError(f"train.device: '{cfg.train.device}' is not one of auto, cpu, cuda, cuda:N")
    _validate_model(cfg.model)
    _validate_data(cfg.data)
    _validate_loss(cfg.loss)
    cfg.rerank.args = RERANKERS[cfg.rerank.name].resolve(cfg.rerank.args, "rerank.args.")
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


# Keys added after earlier versions stored resolved configs (checkpoints, index manifests), with
# the value those versions used: a stored config without one rebuilds the model it describes.
STORED_DEFAULTS = {("model", "embedding_bn"): False, ("optim", "attention_lr_mult"): 1.0}


def config_from_dict(raw: dict, overrides: list[str] | None = None, stored: bool = False) -> Config:
    """Build and validate a Config from a nested mapping plus overrides.

    stored: ``raw`` is a resolved config the library saved (checkpoint, run folder): keys it
    lacks take their value of the version that wrote it (STORED_DEFAULTS), and old loss and
    attention keys (``migrate_loss``, ``migrate_model``) are logged at debug level, since the
    user did not write them.
    """
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in (raw or {}).items()}
    if stored:
        for (section, key), value in STORED_DEFAULTS.items():
            if isinstance(raw.get(section), dict):
                raw[section].setdefault(key, value)
    raw = apply_overrides(raw, list(overrides or []))
    if isinstance(raw.get("loss"), dict):
        raw["loss"] = migrate_loss(raw["loss"], quiet=stored)
    if isinstance(raw.get("model"), dict):
        raw["model"] = migrate_model(raw["model"], quiet=stored)
    return validate(_build(Config, raw, ""))


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
