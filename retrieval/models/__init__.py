"""The embedding network: ResNet backbone with CBAM / SE / BAM attention + CGD head (DESIGN.md "Model")."""
from .attention import ATTENTIONS, AttentionPlan, build_attention, is_attention_parameter
from .backbone import BACKBONES, CBAMBasicBlock, CBAMBottleneck, ResNetBackbone, build_resnet
from .bam import BAM
from .cbam import CBAM, ChannelGate, SpatialGate
from .cgd import CGDHead, GlobalDescriptor
from .net import RetrievalNet, build_model, resolve_cbam_init
from .pretrained import LoadReport, load_pretrained

__all__ = [
    "ATTENTIONS", "AttentionPlan", "BACKBONES", "BAM", "CBAM", "CBAMBasicBlock", "CBAMBottleneck", "CGDHead",
    "ChannelGate", "GlobalDescriptor", "LoadReport", "ResNetBackbone", "RetrievalNet", "SpatialGate",
    "build_attention", "build_model", "build_resnet", "is_attention_parameter",
    "load_pretrained", "resolve_cbam_init",
]
