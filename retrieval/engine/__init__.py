"""Training: the loop and run folders (torch.distributed through ``retrieval.parallel``)."""
from .trainer import train

__all__ = ["train"]
