"""Plots (matplotlib is imported only when a plot is drawn)."""

from __future__ import annotations

from scvi_scgpt.pl._confusion import confusion_matrix
from scvi_scgpt.pl._embedding import embedding_panels
from scvi_scgpt.pl._networks import program_network, program_scores_heatmap
from scvi_scgpt.pl._perturbation import perturbation_response

__all__ = [
    "confusion_matrix",
    "embedding_panels",
    "perturbation_response",
    "program_network",
    "program_scores_heatmap",
]
