"""The embedding network: CBAM-ResNet backbone + CGD head (DESIGN.md "Model")."""
from .backbone import BACKBONES, CBAMBasicBlock, CBAMBottleneck, ResNetBackbone, build_resnet
from .cbam import CBAM, ChannelGate, SpatialGate
from .cgd import CGDHead, GlobalDescriptor
from .net import RetrievalNet, build_model, resolve_cbam_init
from .pretrained import LoadReport, load_pretrained

__all__ = [
    "BACKBONES", "CBAM", "CBAMBasicBlock", "CBAMBottleneck", "CGDHead", "ChannelGate", "GlobalDescriptor",
    "LoadReport", "ResNetBackbone", "RetrievalNet", "SpatialGate", "build_model", "build_resnet",
    "load_pretrained", "resolve_cbam_init",
]
