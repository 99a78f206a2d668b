"""Pictures: retrieval grids (query beside its top-K results), Grad-CAM / attention gates, pair explanations,
Recall@K curves.

The grid needs only Pillow; attention figures and curves need matplotlib (the ``viz`` extra),
imported when they are drawn.
"""
from .attention import attention_figure, grad_cam
from .explain import explain_figure, explanation_figure
from .grid import Hit, retrieval_grid, save_retrieval_grid
from .plots import recall_curve

__all__ = ["Hit", "attention_figure", "explain_figure", "explanation_figure", "grad_cam", "recall_curve",
           "retrieval_grid", "save_retrieval_grid"]
