"""The scvi-tools module wrapping the scGPT network, and the official parameter names."""

from __future__ import annotations

from scvi_scgpt.module._config import ArchitectureConfig, ObjectiveConfig
from scvi_scgpt.module._module import SCGPTModule
from scvi_scgpt.module._official import (
    FREEZE_GROUPS,
    HEAD_PREFIXES,
    NON_OFFICIAL_PREFIXES,
    PER_BATCH_ROWS,
    infer_architecture,
    official_args,
    to_torch_layout,
)

__all__ = [
    "FREEZE_GROUPS",
    "HEAD_PREFIXES",
    "NON_OFFICIAL_PREFIXES",
    "PER_BATCH_ROWS",
    "ArchitectureConfig",
    "ObjectiveConfig",
    "SCGPTModule",
    "infer_architecture",
    "official_args",
    "to_torch_layout",
]
