"""The retrieval network (ResNet backbone with CBAM / SE / BAM + CGD head) and ``build_model`` from a ModelConfig."""
from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from ..schema import ModelConfig
from .attention import build_attention
from .backbone import ResNetBackbone, build_backbone
from .cgd import CGDHead
from .pretrained import load_pretrained

log = logging.getLogger(__name__)


def _tracing() -> bool:
    """True while TorchScript, torch.export or torch.compile trace the model (input checks are eager-only)."""
    compiling = getattr(torch.compiler, "is_compiling", lambda: False)  # torch >= 2.3
    return torch.jit.is_tracing() or torch.jit.is_scripting() or compiling()


class RetrievalNet(nn.Module):
    """images (B, 3, H, W) float → embeddings (B, embedding_dim) float32, L2-normalised."""

    def __init__(self, backbone: ResNetBackbone, head: CGDHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.embedding_dim: int = head.embedding_dim
        self.num_classes: int = head.num_classes

    def check_images(self, images: Tensor) -> None:
        """Raise ValueError unless ``images`` is a float (B, 3, H, W) batch with H, W >= the output stride."""
        if not isinstance(images, Tensor):
            raise ValueError(f"images: expected a torch.Tensor (B, 3, H, W), got {type(images).__name__}")
        shape = tuple(images.shape)
        stride = self.backbone.output_stride
        if images.dim() != 4:
            raise ValueError(f"images: expected 4 dimensions (B, 3, H, W), got shape {shape}")
        if shape[1] != 3:
            raise ValueError(f"images: expected 3 colour channels (B, 3, H, W), got shape {shape}")
        if min(shape[2:]) < stride:
            raise ValueError(f"images: expected H, W >= {stride} (the {self.backbone.arch} output stride), "
                             f"got shape {shape}")
        if not images.is_floating_point():
            raise ValueError(f"images: expected a float tensor (normalised pixels), got {images.dtype}")

    def _features(self, images: Tensor) -> Tensor:
        if not _tracing():
            self.check_images(images)
        return self.backbone(images)

    def forward(self, images: Tensor) -> Tensor:
        """Embeddings (B, embedding_dim) float32, L2-normalised. The path ONNX/TorchScript export covers."""
        return self.head(self._features(images))

    def forward_train(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """One pass: embeddings (B, D) and classifier logits already divided by τ (B, num_classes), or None."""
        return self.head.forward_train(self._features(images))

    def gate_modules(self) -> list[tuple[str, nn.Module]]:
        """(label, module whose output is a spatial gate) per stage: CBAM's last block, or BAM after stages 1–3.

        CBAM's module outputs (B, 1, h, w); BAM's outputs its 3-D attention (B, C, h, w).
        Empty when the model has no spatial attention (model.attention none or se).
        """
        backbone = self.backbone
        if backbone.has_bottleneck_attention:
            return [(f"BAM after stage {i + 1}", bam.sigmoid)
                    for i, bam in enumerate((backbone.bam1, backbone.bam2, backbone.bam3))]
        gates = [getattr(stage[-1], "cbam", None) for stage in backbone.stages]
        if not backbone.has_attention or any(getattr(g, "spatial", None) is None for g in gates):
            return []
        return [(f"CBAM stage {i + 1}", g.spatial.sigmoid) for i, g in enumerate(gates)]

    def attention_maps(self, images: Tensor) -> list[Tensor]:
        """Spatial attention (B, 1, h, w) in (0, 1) per attention stage: 4 CBAM maps or 3 BAM maps.

        CBAM: the spatial gate's sigmoid output of each stage's last block (before the
        identity-start factor). BAM: the channel mean of σ(M_c + M_s) at each bottleneck, the
        average gate at each location. Both gate a residual term, not the feature map itself.
        Raises ValueError when the model has no spatial attention (model.attention none or se).
        Runs without gradients; put the model in eval mode first (BN statistics).
        """
        gates = self.gate_modules()
        if not gates:
            raise ValueError("attention_maps: this model has no spatial attention (built with model.attention="
                             "none or se, formerly model.cbam=false or model.cbam_spatial=false)")
        self.check_images(images)
        maps: list[Tensor] = []

        def keep(_module: nn.Module, _inputs: object, out: Tensor) -> None:
            maps.append(out.detach().float().mean(dim=1, keepdim=True))

        hooks = [module.register_forward_hook(keep) for _, module in gates]
        try:
            with torch.no_grad():
                self.backbone(images)
        finally:
            for hook in hooks:
                hook.remove()
        return maps


def resolve_cbam_init(cfg: ModelConfig) -> str:
    """model.cbam_init (every attention family's) with "auto" resolved: identity when pretrained, else the paper's.

    Depends on the config only (not on whether weights are loaded now), so a checkpoint
    rebuilds the same network it was trained with.
    """
    if cfg.cbam_init != "auto":
        return cfg.cbam_init
    return "paper" if cfg.pretrained == "none" else "identity"


def build_model(cfg: ModelConfig, num_classes: int, load_weights: bool = True) -> RetrievalNet:
    """The network ``cfg`` describes, with ``num_classes`` auxiliary-classifier outputs (0 = none).

    load_weights=False skips ``cfg.pretrained`` (a checkpoint's state dict is loaded next).
    """
    plan = build_attention(cfg, resolve_cbam_init(cfg))
    backbone = build_backbone(cfg.backbone, plan.block, cfg.last_stride, plan.bottleneck)
    if load_weights:
        load_pretrained(backbone, cfg.pretrained)
    head = CGDHead(backbone.out_channels, cfg.descriptors, cfg.embedding_dim, num_classes,
                   cfg.gem_p, cfg.gem_learnable, cfg.temperature, cfg.embedding_bn, cfg.metric_on,
                   cfg.classifier_on, cfg.embedding_bn_scale)
    model = RetrievalNet(backbone, head)
    log.info("built %s%s + CGD '%s' → %d-d embeddings, %d classes, %.2fM parameters", cfg.backbone,
             f" + {cfg.attention.upper()} ({resolve_cbam_init(cfg)} init)" if cfg.attention != "none" else "",
             head.descriptors,
             model.embedding_dim, num_classes, sum(p.numel() for p in model.parameters()) / 1e6)
    return model
