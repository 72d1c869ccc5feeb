"""Training: objectives, task presets, collation and the Lightning training plan."""

from __future__ import annotations

from scvi_scgpt.train._collate import TokenCollator, mask_values
from scvi_scgpt.train._config import PRESETS, ObjectiveConfig, TaskPreset
from scvi_scgpt.train._trainingplan import SCGPTTrainingPlan

__all__ = [
    "PRESETS",
    "ObjectiveConfig",
    "SCGPTTrainingPlan",
    "TaskPreset",
    "TokenCollator",
    "mask_values",
]
