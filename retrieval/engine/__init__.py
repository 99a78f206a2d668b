"""Training: the loop, run folders, distributed helpers."""
from .trainer import train

__all__ = ["train"]
