"""Torch and Lightning data plumbing: training collators, streaming, inference batching."""

from __future__ import annotations

from scvi_scgpt.dataloaders._collate import (
    COLLATORS,
    GenerativeCollator,
    TokenCollator,
    mask_values,
    split_generated,
)
from scvi_scgpt.dataloaders._inference import iter_token_batches
from scvi_scgpt.dataloaders._perturbation import (
    PERTURBATION_KEY,
    PairedControlCollator,
    pair_control_cells,
    perturbation_flags,
)
from scvi_scgpt.dataloaders._streaming import AnnDataFileStream, StreamingAnnDataModule

# the perturbation task's collator subclasses TokenCollator, so it registers here
COLLATORS["paired_control"] = PairedControlCollator

__all__ = [
    "COLLATORS",
    "PERTURBATION_KEY",
    "AnnDataFileStream",
    "GenerativeCollator",
    "PairedControlCollator",
    "StreamingAnnDataModule",
    "TokenCollator",
    "iter_token_batches",
    "mask_values",
    "pair_control_cells",
    "perturbation_flags",
    "split_generated",
]
