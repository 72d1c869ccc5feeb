"""Training: objectives, task presets, collation and the Lightning training plan."""

from __future__ import annotations

from scvi_scgpt.train._callbacks import AtomicCheckpoint
from scvi_scgpt.train._collate import (
    GenerativeCollator,
    TokenCollator,
    mask_values,
    split_generated,
)
from scvi_scgpt.train._config import PRESETS, ObjectiveConfig, TaskPreset
from scvi_scgpt.train._trainingplan import SCGPTTrainingPlan, make_optimizer

__all__ = [
    "AtomicCheckpoint",
    "GenerativeCollator",
    "PRESETS",
    "ObjectiveConfig",
    "SCGPTTrainingPlan",
    "TaskPreset",
    "TokenCollator",
    "make_optimizer",
    "mask_values",
    "split_generated",
]
