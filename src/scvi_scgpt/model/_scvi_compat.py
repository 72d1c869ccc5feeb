"""The private scvi-tools APIs SCGPT relies on, each imported here and nowhere else."""

from __future__ import annotations

import torch
from anndata import AnnData

# the uns key of an AnnData's scvi-tools id: needed to tell a set-up AnnData from its copy
from scvi.data._constants import _SCVI_UUID_KEY

# gives a copied AnnData its own id, so its registration does not replace the original's
from scvi.data._utils import _assign_adata_uuid

# Lightning device parsing with scvi-tools' defaults, as every scvi-tools model uses it
# whether a strategy needs a distributed sampler in scvi-tools' DataSplitter (DDP training)
# batch categories to codes, and the raw-count statistics of a DE table, as RNASeqMixin uses them
from scvi.model._utils import (
    _get_batch_code_from_category,
    parse_device_args,
    scrna_raw_counts_properties,
    use_distributed_sampler,
)

# scvi-tools' differential expression core (groups, Bayes factors, the DE DataFrame)
from scvi.model.base._de_core import _de_core

__all__ = [
    "_de_core",
    "anndata_uuid",
    "batch_codes_of",
    "give_own_uuid",
    "pick_device",
    "scrna_raw_counts_properties",
    "use_distributed_sampler",
]


def batch_codes_of(adata_manager, transform_batch) -> list[int | None]:
    """Batch codes of ``transform_batch`` categories (``[None]``: each cell's own batch)."""
    return list(_get_batch_code_from_category(adata_manager, transform_batch))


def anndata_uuid(adata: AnnData) -> str | None:
    """The scvi-tools id written into ``adata.uns`` by a setup, or ``None``."""
    return adata.uns.get(_SCVI_UUID_KEY)


def give_own_uuid(adata: AnnData) -> None:
    """Give ``adata`` a fresh scvi-tools id (a copy of a set-up AnnData carries its source's)."""
    _assign_adata_uuid(adata, overwrite=True)


def pick_device(accelerator: str, device: int | str) -> torch.device:
    """The torch device of scvi-tools' ``accelerator`` / ``device`` arguments."""
    _, _, dev = parse_device_args(
        accelerator=accelerator,
        devices=device,
        return_device="torch",
        validate_single_device=True,
    )
    return dev
