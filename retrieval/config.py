"""Typed configuration: YAML → dataclasses, ``section.key=value`` overrides, validation.

Every section is a dataclass with a comment on each field. ``load_config`` reads a
YAML file, applies command-line overrides, checks every key and type, and runs the
cross-field checks; every problem is a :class:`ConfigError` naming the key, the value
and what is allowed.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError



@dataclass
class DataConfig:
    name: str = "synthetic"  # synthetic | cub | cars | sop | inshop | folder | csv
    root: str = "data/synthetic"  # dataset folder (for csv: the CSV file)
    split: str = "classes"  # classes: metric-learning split (disjoint classes); official: CUB's image-level train_test_split.txt
    train_classes: list[int] | None = None  # [first, last] class ids for training; None = the dataset's standard split
    test_classes: list[int] | None = None  # [first, last] class ids for testing; None = the classes not trained on
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
    backbone: str = "resnet50"  # resnet18 | resnet34 | resnet50 | resnet101
    pretrained: str = "none"  # none | imagenet | path to a torchvision-format state dict
    cbam: bool = True  # one CBAM in every residual block (Woo et al. 2018)
    cbam_reduction: int = 16  # channel-gate MLP reduction r (CBAM §3.1: 16)
    cbam_kernel: int = 7  # spatial-gate conv kernel (CBAM Table 2: 7 beats 3)
    cbam_arrangement: str = "channel_spatial"  # channel_spatial | spatial_channel | parallel (CBAM Table 3)
    cbam_pool: str = "avg_max"  # pooling inside the gates: avg | max | avg_max (CBAM Tables 1-2)
    cbam_spatial: bool = True  # false = channel gate only (the SE-style variant CBAM compares against)
    cbam_init: str = "auto"  # auto (identity when pretrained, else paper) | identity | paper
    last_stride: int = 1  # 1: no down-sampling in the last stage (CGD: 14×14 map at 224 px); 2: torchvision's
    descriptors: str = "SG"  # CGD global descriptors over S (SPoC), M (MAC), G (GeM); the first feeds the classifier
    embedding_dim: int = 1536  # total embedding size, split evenly over the descriptors (CGD: 1536)
    gem_p: float = 3.0  # GeM exponent (CGD: 3)
    gem_learnable: bool = False  # learn the GeM exponent
    temperature: float = 0.5  # classifier logits divided by τ (CGD §3.3: 0.5)


@dataclass
class LossConfig:
    name: str = "triplet"  # triplet | proxy_anchor | proxy_nca | multi_similarity | arcface
    margin: float = 0.1  # triplet margin (CGD: 0.1); Proxy-Anchor δ; ArcFace angular margin in degrees when arcface
    miner: str = "batch_hard"  # batch_hard | semi_hard | all | multi_similarity | none
    alpha: float = 32.0  # Proxy-Anchor α / ArcFace scale
    ms_alpha: float = 2.0  # Multi-Similarity α
    ms_beta: float = 50.0  # Multi-Similarity β
    ms_base: float = 0.5  # Multi-Similarity λ (base)
    proxy_lr_mult: float = 100.0  # learning-rate multiplier of proxies (Proxy-Anchor: 100)
    cls_weight: float = 1.0  # weight of CGD's auxiliary classification loss (0 disables it)
    label_smoothing: float = 0.1  # ε of the classification loss (CGD: 0.1)


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-4  # base learning rate (CGD: 1e-4)
    weight_decay: float = 0.0  # L2 / decoupled weight decay
    momentum: float = 0.9  # SGD momentum
    scheduler: str = "step"  # none | step | cosine
    step_epochs: list[int] = field(default_factory=lambda: [12, 24])  # step: epochs where lr is multiplied by gamma
    gamma: float = 0.1  # step: multiplier
    warmup_epochs: float = 0.0  # linear warm-up length in epochs


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


@dataclass
class EvalConfig:
    recall_k: list[int] = field(default_factory=lambda: [1, 2, 4, 8])  # K of Recall@K (CUB/Cars: 1,2,4,8)
    batch_size: int = 64  # images per forward pass when embedding
    chunk_size: int = 1024  # queries per FAISS search chunk (bounds memory)
    map_at_r: bool = True  # also compute MAP@R and R-precision


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# Closed sets of values, checked by ``validate``: key → allowed values.
CHOICES: dict[str, tuple[str, ...]] = {
    "data.name": ("synthetic", "cub", "cars", "sop", "inshop", "folder", "csv"),
    "data.split": ("classes", "official"),
    "model.backbone": ("resnet18", "resnet34", "resnet50", "resnet101"),
    "model.cbam_arrangement": ("channel_spatial", "spatial_channel", "parallel"),
    "model.cbam_pool": ("avg", "max", "avg_max"),
    "model.cbam_init": ("auto", "identity", "paper"),
    "loss.name": ("triplet", "proxy_anchor", "proxy_nca", "multi_similarity", "arcface"),
    "loss.miner": ("batch_hard", "semi_hard", "all", "multi_similarity", "none"),
    "optim.name": ("adam", "adamw", "sgd"),
    "optim.scheduler": ("none", "step", "cosine"),
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
}

# Keys whose value must be > 0.
POSITIVE = (
    "data.image_size", "data.resize", "data.batch_size", "data.synthetic_classes",
    "data.synthetic_per_class", "data.synthetic_size", "model.cbam_reduction",
    "model.embedding_dim", "model.gem_p", "model.temperature", "optim.lr",
    "train.epochs", "eval.batch_size", "eval.chunk_size",
)


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
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {_type_name(args[0])}, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
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


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected section.key=value (e.g. optim.lr=3e-4)")
    key, value = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override '{text}': expected section.key=value (e.g. optim.lr=3e-4)")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return parts, parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Set ``section.key=value`` items in the raw mapping (values parsed as YAML scalars)."""
    sections = [f.name for f in dataclasses.fields(Config)]
    for text in overrides:
        (section, key), value = _parse_override(text)
        if section not in sections:
            raise ConfigError(f"override '{text}': unknown section '{section}'.{_suggest(section, sections)}")
        node = raw.setdefault(section, {}) or {}
        raw[section] = node
        if isinstance(value, str) and key in ("train_classes", "test_classes", "recall_k", "step_epochs"):
            value = yaml.safe_load(f"[{value}]")  # allow eval.recall_k=1,10,100
        node[key] = value
    return raw


def _check_choice(key: str, value: str) -> None:
    allowed = CHOICES[key]
    if value not in allowed:
        raise ConfigError(f"{key}: '{value}' is not one of {', '.join(allowed)}")


def _get(cfg: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def validate(cfg: Config) -> Config:
    """Check values and their combinations; raise ConfigError naming the key."""
    for key in CHOICES:
        _check_choice(key, _get(cfg, key))
    for key in POSITIVE:
        if _get(cfg, key) <= 0:
            raise ConfigError(f"{key}: must be > 0, got {_get(cfg, key)!r}")
    m = cfg.model
    desc = m.descriptors.upper()
    if not desc or set(desc) - set("SMG") or len(set(desc)) != len(desc):
        raise ConfigError(f"model.descriptors: '{m.descriptors}' must be distinct letters from S, M, G (e.g. SG, MG, SMG)")
    m.descriptors = desc
    if m.embedding_dim % len(desc):
        raise ConfigError(
            f"model.embedding_dim: {m.embedding_dim} is not divisible by the {len(desc)} descriptors "
            f"'{desc}'; use a multiple of {len(desc)}")
    if m.last_stride not in (1, 2):
        raise ConfigError(f"model.last_stride: must be 1 or 2, got {m.last_stride}")
    if m.cbam_kernel % 2 == 0:
        raise ConfigError(f"model.cbam_kernel: must be odd (3 or 7 in CBAM), got {m.cbam_kernel}")
    d = cfg.data
    if d.m_per_class < 1 or d.batch_size % d.m_per_class:
        raise ConfigError(f"data.batch_size: {d.batch_size} is not a multiple of data.m_per_class={d.m_per_class}")
    if d.resize < d.image_size:
        raise ConfigError(f"data.resize: {d.resize} is smaller than data.image_size={d.image_size}")
    for key in ("train_classes", "test_classes"):
        rng = getattr(d, key)
        if rng is not None and (len(rng) != 2 or rng[0] > rng[1]):
            raise ConfigError(f"data.{key}: expected [first, last] with first <= last, got {rng}")
    if d.num_workers < 0:
        raise ConfigError(f"data.num_workers: must be >= 0, got {d.num_workers}")
    if not 0 <= cfg.loss.label_smoothing < 1:
        raise ConfigError(f"loss.label_smoothing: must be in [0, 1), got {cfg.loss.label_smoothing}")
    if cfg.loss.cls_weight < 0:
        raise ConfigError(f"loss.cls_weight: must be >= 0, got {cfg.loss.cls_weight}")
    if not cfg.eval.recall_k or min(cfg.eval.recall_k) < 1:
        raise ConfigError(f"eval.recall_k: expected a non-empty list of K >= 1, got {cfg.eval.recall_k}")
    return cfg


def config_from_dict(raw: dict, overrides: list[str] | None = None) -> Config:
    """Build and validate a Config from a nested mapping plus overrides."""
    raw = apply_overrides(dict(raw or {}), list(overrides or []))
    return validate(_build(Config, raw, ""))


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Read a config file; ``base: other.yaml`` (relative to the file) is read first and overlaid."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
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
