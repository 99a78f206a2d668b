"""Metric-learning image retrieval: CBAM-ResNet + CGD embeddings, PML losses, FAISS search."""
from .config import Config, load_config
from .errors import (
    CheckpointError, ConfigError, DataError, ImageError, IndexFormatError, RetrievalError, TrainingError,
)
from .seeding import seed_everything

__version__ = "0.1.0"
__all__ = [
    "Config", "load_config", "seed_everything", "RetrievalError", "ConfigError", "DataError",
    "ImageError", "CheckpointError", "IndexFormatError", "TrainingError",
]
