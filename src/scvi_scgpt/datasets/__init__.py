"""Small real datasets bundled with the package (see ``datasets/README.md``)."""

from __future__ import annotations

from importlib import resources

import anndata


def pbmc68k_700() -> anndata.AnnData:
    """700 PBMCs x 765 highly variable genes, integer UMI counts, 10 cell types.

    Counts recovered exactly from scanpy's ``pbmc68k_reduced`` (10x Genomics PBMC 68k;
    BSD-3). ``obs["bulk_labels"]`` holds the cell types. A fresh copy on each call.
    """
    ref = resources.files("scvi_scgpt.datasets").joinpath("pbmc68k_700_counts.h5ad")
    with resources.as_file(ref) as path:
        return anndata.read_h5ad(path)


__all__ = ["pbmc68k_700"]
