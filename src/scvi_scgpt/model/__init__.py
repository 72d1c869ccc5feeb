"""The user-facing SCGPT model and checkpoint I/O."""

from __future__ import annotations

from scvi_scgpt.model._checkpoint import (
    CheckpointAudit,
    CheckpointError,
    read_state_dict,
    to_torch_layout,
)
from scvi_scgpt.model._model import SCGPT

__all__ = ["SCGPT", "CheckpointAudit", "CheckpointError", "read_state_dict", "to_torch_layout"]
