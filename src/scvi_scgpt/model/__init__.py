"""The user-facing SCGPT model (one mixin per capability) and safe checkpoint reading."""

from __future__ import annotations

from scvi_scgpt._exceptions import CheckpointError
from scvi_scgpt.model._checkpoint import (
    CheckpointAudit,
    load_into_module,
    read_args,
    read_state_dict,
)
from scvi_scgpt.model._model import SCGPT
from scvi_scgpt.module import to_torch_layout

__all__ = [
    "SCGPT",
    "CheckpointAudit",
    "CheckpointError",
    "load_into_module",
    "read_args",
    "read_state_dict",
    "to_torch_layout",
]
