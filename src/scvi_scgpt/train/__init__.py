"""Training: task presets, the Lightning training plan and callbacks."""

from __future__ import annotations

from scvi_scgpt.dataloaders import (  # re-exported: their home before 0.2 was train/
    GenerativeCollator,
    TokenCollator,
    mask_values,
    split_generated,
)
from scvi_scgpt.module import ObjectiveConfig
from scvi_scgpt.train._best_epoch import BestEpoch
from scvi_scgpt.train._callbacks import AtomicCheckpoint
from scvi_scgpt.train._presets import HYPERPARAMETERS, PRESETS, TaskPreset
from scvi_scgpt.train._trainingplan import SCGPTTrainingPlan, make_optimizer
from scvi_scgpt.train._trivial import (
    NoBetterThanTrivialWarning,
    fit_per_gene_means,
    majority_class,
    majority_class_rate,
    no_better_than_trivial,
    per_gene_mean_mse,
    score_per_gene_means,
    trivial_warning,
)

__all__ = [
    "HYPERPARAMETERS",
    "AtomicCheckpoint",
    "BestEpoch",
    "GenerativeCollator",
    "NoBetterThanTrivialWarning",
    "PRESETS",
    "ObjectiveConfig",
    "SCGPTTrainingPlan",
    "TaskPreset",
    "TokenCollator",
    "fit_per_gene_means",
    "majority_class",
    "majority_class_rate",
    "make_optimizer",
    "mask_values",
    "no_better_than_trivial",
    "per_gene_mean_mse",
    "score_per_gene_means",
    "split_generated",
    "trivial_warning",
]
