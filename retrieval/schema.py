"""The config's sections as typed dataclasses, one comment per field: what a YAML file may say.

The ground floor of the package: it imports nothing of the project, so every module that takes
a section (``models`` a ``ModelConfig``, ``losses`` a ``LossConfig``, ``data`` a ``DataConfig``)
imports its type from here without importing the registries. Reading, overrides, validation
against the registries and migration of old keys live one floor up, in ``config.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Closed sets of values, here so that the command-line flags can offer them without importing torch.
# train.precision / --precision: auto = bf16 on CPUs with native bf16, AMP (bf16 or fp16) on CUDA.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# --runtime: what runs a checkpoint's network when it embeds (``retrieval.execution``).
RUNTIMES = ("torch", "onnxruntime", "onnxruntime-int8")
ONNX_RUNTIMES = ("onnxruntime", "onnxruntime-int8")  # run by ONNX Runtime on the CPU (retrieval.execution)
# data.train_crop: random = resize to resize×resize, random crop (CGD, Jun et al. 2019 §4.1);
# resized = RandomResizedCrop to image_size over data.crop_scale of the area, aspect 3/4–4/3
# (the metric-learning benchmarks' augmentation: Musgrave et al. 2020, "A Metric Learning Reality Check").
TRAIN_CROPS = ("random", "resized")


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
    train_crop: str = "random"  # random: the resized image's random image_size crop (CGD); resized: RandomResizedCrop
    crop_scale: list[float] = field(default_factory=lambda: [0.16, 1.0])  # resized: crop's area range (Musgrave et al. 2020)
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
    embedding_bn_scale: bool = True  # the centring BN's learnable per-coordinate scale (false: centre and standardise only)
    metric_on: str = "embedding"  # what the metric loss sees: embedding (post-BN) | pre_bn (BNNeck, Luo et al. 2019 §3.6)
    classifier_on: str = "descriptor"  # classifier input: descriptor (first pooled one, CGD §3.3) | embedding (post-BN, BNNeck)


@dataclass
class LossConfig:
    name: str = "triplet"  # a losses.LOSSES key: triplet | proxy_anchor | proxy_nca | multi_similarity | arcface
    args: dict[str, Any] = field(default_factory=dict)  # the loss's arguments (e.g. {margin: 0.1}); LOSSES lists them and their defaults
    miner: str = "batch_hard"  # a losses.MINERS key: batch_hard | semi_hard | multi_similarity | all | none
    miner_args: dict[str, Any] = field(default_factory=dict)  # the miner's arguments (semi_hard: margin, default the loss's)
    cls_weight: float = 1.0  # weight of CGD's auxiliary classification loss (0 disables it)
    label_smoothing: float = 0.1  # ε of the classification loss (CGD: 0.1)
    xbm_memory: int = 0  # cross-batch memory (XBM, Wang et al. CVPR 2020): the last N embeddings join each batch's mining; 0 = off


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
    proxy_lr_mult: float = 100.0  # lr multiplier of the loss's parameters, e.g. proxies (Proxy-Anchor: 100)


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
