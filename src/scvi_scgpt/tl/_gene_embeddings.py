"""Gene-embedding tables (reading, validation) and cell embeddings from them (scELMo)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scvi_scgpt.tl._networks import as_embedding_frame

logger = logging.getLogger(__name__)

WEIGHTINGS = ("expression", "mean")
_TEXT_SUFFIXES = {".csv": ",", ".tsv": "\t", ".txt": None}


def _suffixes(path: Path) -> tuple[str, bool]:
    suffixes = [s.lower() for s in path.suffixes]
    compressed = bool(suffixes) and suffixes[-1] == ".gz"
    if compressed:
        suffixes = suffixes[:-1]
    return (suffixes[-1] if suffixes else ""), compressed


def _read_text(path: Path, sep: str | None, compressed: bool) -> pd.DataFrame:
    """Rows ``gene v1 v2 ...``; a header row or a word2vec ``n d`` first line is accepted."""
    import gzip

    opener = gzip.open if compressed else open
    with opener(path, "rt", encoding="utf-8") as handle:
        lines = [line.rstrip("\r\n") for line in handle if line.strip()]
    if not lines:
        raise ValueError(f"Gene-embedding file {path.name} is empty.")

    def split(line: str) -> list[str]:
        return [f.strip() for f in (line.split(sep) if sep else line.split())]

    rows = [split(line) for line in lines]
    header = None
    first = rows[0]
    if len(first) == 2 and all(f.isdigit() for f in first) and len(rows) > 1:
        rows = rows[1:]  # word2vec header "n_genes dim"
    else:
        try:
            [float(f) for f in first[1:]]
        except ValueError:
            header, rows = first, rows[1:]
    if not rows:
        raise ValueError(f"Gene-embedding file {path.name} holds no gene row.")
    widths = {len(r) - 1 for r in rows}
    if len(widths) > 1:
        counts = pd.Series([len(r) - 1 for r in rows]).value_counts()
        raise ValueError(
            f"Gene-embedding file {path.name} has mixed dimensions: rows with "
            f"{dict(counts.sort_index())} values."
        )
    width = widths.pop()
    genes = [r[0] for r in rows]
    try:
        values = np.array([[float(v) for v in r[1:]] for r in rows], dtype=np.float32)
    except ValueError as err:
        raise ValueError(f"Gene-embedding file {path.name}: non-numeric value ({err}).") from err
    if header is not None and len(header) == width + 1:
        columns = header[1:]
    else:
        columns = [str(i) for i in range(width)]
    return pd.DataFrame(values.reshape(len(genes), width), index=genes, columns=columns)


def _read_npz(path: Path) -> pd.DataFrame:
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files)
            gene_key = next((k for k in ("genes", "gene_names", "names") if k in keys), None)
            emb_key = next(
                (k for k in ("embeddings", "embedding", "X", "vectors") if k in keys), None
            )
            if gene_key is None or emb_key is None:
                raise ValueError(
                    f"{path.name} must hold a 'genes' array and an 'embeddings' matrix; "
                    f"found {sorted(keys)}."
                )
            genes = np.asarray(data[gene_key]).astype(str)
            values = np.asarray(data[emb_key])
    except ValueError as err:
        if "pickle" in str(err).lower():
            raise ValueError(
                f"{path.name} holds Python objects (ragged rows of mixed dimensions, or gene "
                "names saved as an object array); only plain arrays are read (no pickle): "
                "save the genes with dtype=str."
            ) from err
        raise
    if values.ndim != 2 or not np.issubdtype(values.dtype, np.number):
        raise ValueError(
            f"{path.name}: embeddings must be a numeric (n_genes, d) matrix, got "
            f"{values.dtype} of shape {values.shape} (mixed dimensions?)."
        )
    if len(genes) != len(values):
        raise ValueError(f"{path.name}: {len(genes)} genes for {len(values)} embedding rows.")
    return pd.DataFrame(values, index=genes, columns=[str(i) for i in range(values.shape[1])])


def _read_parquet(path: Path, gene_column: str | None) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path)
    except ImportError as err:
        raise ImportError(
            "Reading parquet needs pyarrow or fastparquet (pip install pyarrow)."
        ) from err
    if gene_column is None:
        text = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
        if len(text) == 1:
            gene_column = text[0]
        elif text:
            raise ValueError(f"{path.name}: several text columns {text}; pass gene_column.")
    if gene_column is not None:
        frame = frame.set_index(gene_column)
    return frame


def read_gene_embeddings(path: str | Path, *, gene_column: str | None = None) -> pd.DataFrame:
    """Read a gene-embedding table (the model's own, GenePT, scELMo, ...).

    Formats, chosen by the file suffix:

    - ``.csv`` / ``.tsv`` (optionally ``.gz``): first column the gene, then one column per
      dimension; a header row is optional.
    - ``.txt``: whitespace-separated ``gene v1 v2 ...`` rows, optionally after a word2vec
      ``n_genes dim`` line (the format the official ``GeneEmbedding`` writes).
    - ``.parquet``: genes in the index or in the single text column (or ``gene_column``).
    - ``.npz``: arrays ``genes`` and ``embeddings`` (read with ``allow_pickle=False``).

    Pickles are never read.

    Parameters
    ----------
    path
        The file.
    gene_column
        Parquet only: the column holding gene names.

    Returns
    -------
    A float32 DataFrame, genes as index, one column per dimension.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Gene-embedding file {str(path)!r} does not exist.")
    suffix, compressed = _suffixes(path)
    if suffix in _TEXT_SUFFIXES:
        frame = _read_text(path, _TEXT_SUFFIXES[suffix], compressed)
    elif suffix == ".npz" and not compressed:
        frame = _read_npz(path)
    elif suffix == ".parquet" and not compressed:
        frame = _read_parquet(path, gene_column)
    else:
        raise ValueError(
            f"Unsupported gene-embedding file {path.name!r}: use .csv, .tsv, .txt (optionally "
            ".gz), .parquet or .npz (pickles are not read)."
        )
    return as_embedding_frame(frame)


def cell_embeddings_from_genes(
    adata: ad.AnnData,
    gene_embeddings: pd.DataFrame | Mapping[str, np.ndarray],
    *,
    weighting: str = "expression",
    layer: str | None = None,
    key_added: str = "X_gene_emb",
    chunk_size: int = 4096,
) -> list[str]:
    """Cell embeddings as averages of gene embeddings (scELMo / GenePT).

    With ``weighting="expression"`` (scELMo "wa"), cell ``c`` gets
    ``sum_g x_cg v_g / sum_g x_cg``; with ``weighting="mean"`` (scELMo "aa"), the plain
    mean of ``v_g`` over its expressed genes (``x_cg > 0``). Only genes present in both
    ``adata`` and the table are used. Sparse matrices are never densified (cells are
    processed in chunks). Cells expressing none of the table's genes get a zero vector
    (with a warning).

    Parameters
    ----------
    adata
        Cells x genes, non-negative values (counts or normalised expression).
    gene_embeddings
        Genes x dimensions table (e.g. :func:`read_gene_embeddings` or
        ``SCGPT.gene_embeddings()``), or a mapping gene -> vector.
    weighting
        ``"expression"`` or ``"mean"``.
    layer
        Layer to use instead of ``X``.
    key_added
        ``adata.obsm`` key written.
    chunk_size
        Cells per chunk.

    Returns
    -------
    The genes of ``adata`` missing from the table (also logged). Writes
    ``adata.obsm[key_added]`` (float32, cells x dimensions) and nothing else.
    """
    if not isinstance(adata, ad.AnnData):
        raise TypeError(f"adata must be an AnnData, not {type(adata).__name__}.")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting={weighting!r} must be one of {WEIGHTINGS}.")
    if layer is not None and layer not in adata.layers:
        raise ValueError(f"Layer {layer!r} not in adata.layers ({list(adata.layers)}).")
    table = as_embedding_frame(gene_embeddings)
    var_names = adata.var_names.astype(str)
    if var_names.duplicated().any():
        raise ValueError("adata.var_names must be unique (call adata.var_names_make_unique()).")
    in_table = var_names.isin(table.index)
    columns = np.flatnonzero(in_table)
    missing = list(var_names[~in_table])
    if not len(columns):
        raise ValueError(
            "None of the genes of adata are in the gene-embedding table (first genes: "
            f"{list(var_names[:5])} vs {list(table.index[:5])})."
        )
    if missing:
        logger.info(
            "%d of %d genes are not in the gene-embedding table (first: %s).",
            len(missing),
            len(var_names),
            missing[:10],
        )
    vectors = table.loc[var_names[columns]].to_numpy(dtype=np.float32)
    x = adata.layers[layer] if layer is not None else adata.X
    n_cells = adata.n_obs
    out = np.zeros((n_cells, vectors.shape[1]), dtype=np.float32)
    empty = 0
    for start in range(0, n_cells, int(chunk_size)):
        block = x[start : start + int(chunk_size)]
        if sp.issparse(block):
            block = sp.csr_matrix(block)[:, columns].astype(np.float32)
            data = block.data
        else:
            block = np.asarray(block, dtype=np.float32)[:, columns]
            data = block
        if data.size and (np.nanmin(data) < 0 or not np.isfinite(data).all()):
            raise ValueError("Expression values must be finite and non-negative.")
        if weighting == "mean":
            if sp.issparse(block):
                block = block.copy()
                block.data = (block.data > 0).astype(np.float32)
            else:
                block = (block > 0).astype(np.float32)
        weights = np.asarray(block.sum(1)).ravel()
        summed = np.asarray(block @ vectors, dtype=np.float32)
        zero = weights == 0
        empty += int(zero.sum())
        weights[zero] = 1.0
        out[start : start + len(weights)] = summed / weights[:, None]
    if empty:
        warnings.warn(
            f"{empty} cell(s) express none of the table's genes; their embedding is zero.",
            UserWarning,
            stacklevel=2,
        )
    adata.obsm[key_added] = out
    return missing
