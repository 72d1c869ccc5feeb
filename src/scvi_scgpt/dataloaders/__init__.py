"""Torch and Lightning data plumbing: training collators, streaming, inference batching."""

from __future__ import annotations

from scvi_scgpt.dataloaders._atlas import AtlasDataModule, CellBlockDataset
from scvi_scgpt.dataloaders._collate import (
    COLLATORS,
    GenerativeCollator,
    TokenCollator,
    mask_values,
    split_generated,
)
from scvi_scgpt.dataloaders._inference import iter_token_batches
from scvi_scgpt.dataloaders._multiomic import CellRowsDataModule, MultiOmicCollator
from scvi_scgpt.dataloaders._perturbation import (
    PERTURBATION_KEY,
    PairedControlCollator,
    pair_control_cells,
    perturbation_flags,
)
from scvi_scgpt.dataloaders._streaming import AnnDataFileStream, StreamingAnnDataModule

# the perturbation and multi-omic collators subclass TokenCollator, so they register here
COLLATORS["paired_control"] = PairedControlCollator
COLLATORS["multiomic"] = MultiOmicCollator

__all__ = [
    "AtlasDataModule",
    "CellBlockDataset",
    "COLLATORS",
    "PERTURBATION_KEY",
    "AnnDataFileStream",
    "CellRowsDataModule",
    "GenerativeCollator",
    "MultiOmicCollator",
    "PairedControlCollator",
    "StreamingAnnDataModule",
    "TokenCollator",
    "iter_token_batches",
    "mask_values",
    "pair_control_cells",
    "perturbation_flags",
    "split_generated",
]
