"""Plots (matplotlib is imported only when a plot is drawn)."""

from __future__ import annotations

from scvi_scgpt.pl._confusion import confusion_matrix
from scvi_scgpt.pl._embedding import embedding_panels
from scvi_scgpt.pl._networks import program_network, program_scores_heatmap

__all__ = ["confusion_matrix", "embedding_panels", "program_network", "program_scores_heatmap"]
