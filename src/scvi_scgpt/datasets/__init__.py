"""Small real datasets bundled with the package (see ``datasets/README.md``)."""

from __future__ import annotations

import warnings
from importlib import resources
from typing import TYPE_CHECKING

import anndata

from scvi_scgpt.datasets._gears import read_gears
from scvi_scgpt.datasets._simulate import simulate_perturbseq
from scvi_scgpt.datasets._simulate_atlas import simulate_atlas

if TYPE_CHECKING:
    import mudata


def pbmc68k_700() -> anndata.AnnData:
    """700 PBMCs x 765 highly variable genes, integer UMI counts, 10 cell types.

    Counts recovered exactly from scanpy's ``pbmc68k_reduced`` (10x Genomics PBMC 68k;
    BSD-3). ``obs["bulk_labels"]`` holds the cell types. A fresh copy on each call.
    """
    ref = resources.files("scvi_scgpt.datasets").joinpath("pbmc68k_700_counts.h5ad")
    with resources.as_file(ref) as path:
        return anndata.read_h5ad(path)


def cite_pbmc_2batch() -> mudata.MuData:
    """400 PBMCs from two 10x CITE-seq runs: RNA and 14 antibodies, raw counts.

    Modalities ``"rna"`` (400 x 15,792 genes) and ``"prot"`` (400 x 14 antibodies); the
    sequencing run is ``obs["batch"]`` (``"pbmc10k"`` / ``"pbmc5k"``, 200 cells each) and
    ``obs["adt_cell_type"]`` holds silver cell types gated on the antibody panel (CD4 T,
    CD8 T, B, CD14 mono, CD16 mono, NK, ambiguous; the rule is in ``uns``). From the
    scvi-tools 1.4.2 test data (10x Genomics; BSD-3). A fresh copy on each call.
    """
    import mudata

    ref = resources.files("scvi_scgpt.datasets").joinpath("cite_pbmc_2batch.h5mu")
    with resources.as_file(ref) as path, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # mudata's pull_on_update notice
        return mudata.read_h5mu(path)


__all__ = [
    "cite_pbmc_2batch",
    "pbmc68k_700",
    "read_gears",
    "simulate_atlas",
    "simulate_perturbseq",
]
