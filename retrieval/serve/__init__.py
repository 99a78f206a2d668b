"""``retrieval-serve``: the HTTP service and web page over a checkpoint and its index folder."""
from .app import create_app
from .batcher import MicroBatcher
from .service import RetrievalService, Settings

__all__ = ["MicroBatcher", "RetrievalService", "Settings", "create_app"]
