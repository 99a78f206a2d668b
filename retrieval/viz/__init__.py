"""Pictures: retrieval grids (query beside its top-K results)."""
from .grid import Hit, retrieval_grid, save_retrieval_grid

__all__ = ["Hit", "retrieval_grid", "save_retrieval_grid"]
