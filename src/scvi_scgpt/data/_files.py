"""Reading on-disk AnnData files (.h5ad backed, .zarr) without loading their matrix."""

from __future__ import annotations

from pathlib import Path

import anndata
import numpy as np


def open_anndata_file(path: str | Path, layer: str | None = None):
    """Lazily readable expression matrix and var table of an .h5ad (backed) or .zarr file.

    Returns
    -------
    ``(matrix, var, handle)``: the matrix (rows are read on slicing), the ``var`` table, and
    the backed AnnData of an ``.h5ad`` (close its ``.file`` when done) or ``None``.
    """
    path = Path(path)
    if path.suffix == ".zarr" or path.is_dir():
        import zarr

        group = zarr.open_group(str(path), mode="r")
        node = group["X"] if layer is None else group["layers"][layer]
        matrix = anndata.io.sparse_dataset(node) if isinstance(node, zarr.Group) else node
        var = anndata.io.read_elem(group["var"])
        return matrix, var, None
    adata = anndata.read_h5ad(path, backed="r")
    matrix = adata.X if layer is None else adata.layers[layer]
    return matrix, adata.var, adata


def read_gene_names(path: str | Path, gene_symbols_key: str | None = None) -> np.ndarray:
    """Gene names of an on-disk AnnData without loading its matrix."""
    path = Path(path)
    _, var, handle = open_anndata_file(path)
    names = np.asarray(var[gene_symbols_key] if gene_symbols_key else var.index, dtype=object)
    if handle is not None:
        handle.file.close()
    return names
