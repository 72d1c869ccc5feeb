"""The scvi-tools module wrapping the scGPT network."""

from __future__ import annotations

from scvi_scgpt.module._config import ArchitectureConfig
from scvi_scgpt.module._module import SCGPTModule

__all__ = ["ArchitectureConfig", "SCGPTModule"]
