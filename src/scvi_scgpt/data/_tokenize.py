"""Turning expression rows into scGPT token sequences, vectorized over CSR matrices."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp

from scvi_scgpt._constants import (
    CLS_VALUE_PRETRAIN,
    MAX_SEQ_LEN,
    N_BINS,
    PAD_VALUE,
    TOKEN_KEYS,
)
from scvi_scgpt.data._binning import bin_expression
from scvi_scgpt.data._random import STREAM_SAMPLING, STREAM_TIES, cell_seeds, entry_uniform


@dataclass(frozen=True)
class TokenizerConfig:
    """How cells become token sequences.

    Parameters
    ----------
    max_seq_len
        Maximum tokens per cell, ``<cls>`` included. Cells with more genes keep a random
        (per-cell seeded) subset of ``max_seq_len - 1`` genes.
    n_bins
        Number of expression bins including the zero bin; ``None`` feeds the values unbinned
        (``input_style="continuous"``, used for log-normalised inputs).
    include_zero_genes
        Tokenize every vocabulary gene of the data, zeros included (official integration recipe),
        instead of only the expressed genes (zero-shot embedding, annotation).
    cls_value
        Value of the ``<cls>`` token: ``-2`` in pretraining and zero-shot embedding, ``0`` in
        the official fine-tuning tutorials.
    pad_value
        Value of padding positions.
    seed
        Seed of the per-cell random choices (tie spreading, gene sampling).
    allow_empty_cells
        Tokenize cells with no expressed vocabulary gene as ``<cls>`` alone instead of raising.
    """

    max_seq_len: int = MAX_SEQ_LEN
    n_bins: int | None = N_BINS
    include_zero_genes: bool = False
    cls_value: float = CLS_VALUE_PRETRAIN
    pad_value: float = PAD_VALUE
    seed: int = 0
    allow_empty_cells: bool = False

    def __post_init__(self) -> None:
        if self.max_seq_len < 2:
            raise ValueError(f"max_seq_len must be >= 2 (cls + one gene), got {self.max_seq_len}.")
        if self.n_bins is not None and self.n_bins < 3:
            raise ValueError(f"n_bins must be >= 3 or None, got {self.n_bins}.")

    def to_dict(self) -> dict:
        """Plain-dict form (JSON-serialisable)."""
        return asdict(self)


@dataclass(frozen=True)
class ModalityLayout:
    """Which modality each matrix column holds and which cells were measured in each.

    Parameters
    ----------
    column_modality
        ``(n_columns,)`` modality id of each column (ids of the modality vocabulary,
        :func:`~scvi_scgpt.data.modality_vocabulary`).
    measured
        ``(n_cells, n_modality_ids)`` bool: cell ``i`` was measured in modality ``j``.
    cls_id, pad_id
        Modality ids of ``<cls>`` and of padding.
    presence_only
        Modality ids whose values record presence only (binary ATAC peaks): every nonzero
        entry gets the top bin. Binned on quantiles, the equal values of a binary matrix
        would all be ties and get random bins.
    """

    column_modality: np.ndarray
    measured: np.ndarray
    cls_id: int
    pad_id: int
    presence_only: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "column_modality", np.asarray(self.column_modality, np.int64))
        object.__setattr__(self, "measured", np.asarray(self.measured, dtype=bool))
        object.__setattr__(self, "presence_only", tuple(int(m) for m in self.presence_only))

    def rows(self, rows: np.ndarray) -> ModalityLayout:
        """The layout of a subset of cells (``measured[rows]``)."""
        return ModalityLayout(
            self.column_modality,
            self.measured[rows],
            self.cls_id,
            self.pad_id,
            self.presence_only,
        )


@dataclass
class TokenizedCells:
    """Ragged token sequences of several cells (``<cls>`` first in each).

    Attributes
    ----------
    indptr
        ``n_cells + 1`` offsets into ``gene_ids`` / ``values``.
    gene_ids
        Vocabulary ids of all tokens, concatenated.
    values
        Input values (bins, or raw values) of all tokens, float32.
    n_expressed
        Expressed vocabulary genes per cell before sampling to ``max_seq_len``.
    modality_ids
        Modality id of every token (multi-omic tokenization), or ``None``.
    """

    indptr: np.ndarray
    gene_ids: np.ndarray
    values: np.ndarray
    n_expressed: np.ndarray
    modality_ids: np.ndarray | None = None

    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return len(self.indptr) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per cell, ``<cls>`` included."""
        return np.diff(self.indptr)

    def pad(
        self,
        rows: np.ndarray | None,
        *,
        pad_id: int,
        pad_value: float,
        modality_pad_id: int = 0,
    ) -> dict[str, np.ndarray]:
        """Padded ``(len(rows), L)`` arrays for a subset of cells, ``L`` = longest of them.

        Returns a dict with ``gene_ids`` (int64), ``values`` (float32) and ``padding_mask``
        (bool, ``True`` at padding), and ``modality_ids`` (int64, ``modality_pad_id`` at
        padding) for multi-omic tokens.
        """
        rows = np.arange(self.n_cells) if rows is None else np.asarray(rows)
        starts = self.indptr[rows]
        lengths = self.indptr[rows + 1] - starts
        width = int(lengths.max()) if len(rows) else 0
        pos = np.arange(width)
        valid = pos[None, :] < lengths[:, None]
        src = (starts[:, None] + pos[None, :])[valid]
        gene_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
        values = np.full((len(rows), width), pad_value, dtype=np.float32)
        gene_ids[valid] = self.gene_ids[src]
        values[valid] = self.values[src]
        out = {
            TOKEN_KEYS.GENE_IDS: gene_ids,
            TOKEN_KEYS.VALUES: values,
            TOKEN_KEYS.PADDING_MASK: ~valid,
        }
        if self.modality_ids is not None:
            modality = np.full((len(rows), width), modality_pad_id, dtype=np.int64)
            modality[valid] = self.modality_ids[src]
            out[TOKEN_KEYS.MODALITY_IDS] = modality
        return out


def check_expression_values(data: np.ndarray, *, where: str = "the expression matrix") -> None:
    """Raise a ``ValueError`` for NaN, infinite or negative expression values."""
    if data.size == 0:
        return
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise ValueError(f"{where} has dtype {data.dtype}; expected real numbers (counts).")
    if np.issubdtype(data.dtype, np.floating):
        bad = ~np.isfinite(data)
        if bad.any():
            raise ValueError(
                f"{where} contains {int(bad.sum())} NaN or infinite values. Fix or drop them "
                "before using SCGPT (e.g. replace NaN by 0 if it means 'not detected')."
            )
    if (data < 0).any():
        raise ValueError(
            f"{where} contains {int((data < 0).sum())} negative values (min {data.min():.3g}). "
            "SCGPT expects raw counts or non-negative normalised expression, not scaled or "
            "centred data: pass the counts layer with `layer=` in setup_anndata."
        )


def _as_csr(matrix) -> sp.csr_matrix:
    if sp.issparse(matrix):
        csr = matrix.tocsr() if matrix.format != "csr" else matrix
    else:
        csr = sp.csr_matrix(np.asarray(matrix))
    if not csr.has_canonical_format:
        csr = csr.copy()
        csr.sum_duplicates()
    return csr


def _expressed_entries(
    csr: sp.csr_matrix, column_vocab_ids: np.ndarray, modalities: ModalityLayout | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """The entries that become tokens: ``(rows, gene_ids, values, columns, modalities)``.

    An entry counts when its gene is in the vocabulary (``column_vocab_ids >= 0``), its
    value is nonzero and, for multi-omic rows, the cell was measured in its modality. The
    one rule of what a cell expresses, shared by :func:`tokenize_cells` and
    :func:`empty_cell_mask`.
    """
    n_cells = csr.shape[0]
    if csr.shape[1] != len(column_vocab_ids):
        raise ValueError(
            f"Matrix has {csr.shape[1]} genes but {len(column_vocab_ids)} gene ids were given."
        )
    entry_rows = np.repeat(np.arange(n_cells), np.diff(csr.indptr))
    entry_vocab = column_vocab_ids[csr.indices]
    keep = (entry_vocab >= 0) & (csr.data != 0)
    rows, gene_ids, raw, cols = (
        entry_rows[keep],
        entry_vocab[keep],
        csr.data[keep],
        csr.indices[keep],
    )
    if modalities is None:
        return rows, gene_ids, raw, cols, None
    column_modality, measured = modalities.column_modality, modalities.measured
    if len(column_modality) != csr.shape[1] or len(measured) != n_cells:
        raise ValueError(
            f"The modality layout ({len(column_modality)} columns, {len(measured)} cells) "
            f"does not fit the matrix {csr.shape}."
        )
    mods = column_modality[cols]
    measured_entry = measured[rows, mods]
    return (
        rows[measured_entry],
        gene_ids[measured_entry],
        raw[measured_entry],
        cols[measured_entry],
        mods[measured_entry],
    )


def empty_cell_mask(
    matrix, column_vocab_ids: np.ndarray, modalities: ModalityLayout | None = None
) -> np.ndarray:
    """Which cells have no expressed vocabulary gene (no token besides ``<cls>``).

    These are the cells :func:`tokenize_cells` refuses unless ``allow_empty_cells``: the
    same rule, from the same code.

    Parameters
    ----------
    matrix
        ``n_cells x n_genes`` scipy sparse matrix (any format) or dense array.
    column_vocab_ids
        Vocabulary id of each column, ``-1`` for genes outside the vocabulary.
    modalities
        Multi-omic rows: a cell expresses only what it was measured in.

    Returns
    -------
    ``(n_cells,)`` bool mask, ``True`` for empty cells.
    """
    csr = _as_csr(matrix)
    ids = np.asarray(column_vocab_ids, dtype=np.int64)
    rows = _expressed_entries(csr, ids, modalities)[0]
    return np.bincount(rows, minlength=csr.shape[0]) == 0


def tokenize_cells(
    matrix,
    column_vocab_ids: np.ndarray,
    config: TokenizerConfig,
    *,
    cls_id: int,
    cell_labels: np.ndarray | None = None,
    modalities: ModalityLayout | None = None,
) -> TokenizedCells:
    """Tokenize the rows of an expression matrix.

    For each cell: keep the genes that are in the vocabulary (``column_vocab_ids >= 0``) and
    expressed (or all of them with ``include_zero_genes``), bin the non-zero values per cell
    (:func:`bin_expression`, before any sampling, as the official pipeline does), sample
    ``max_seq_len - 1`` genes when there are more (per-cell seeded), and prepend ``<cls>``.
    Genes keep their column order. Nothing is densified beyond the token arrays.

    Parameters
    ----------
    matrix
        ``n_cells x n_genes`` scipy sparse matrix or dense array of non-negative values.
    column_vocab_ids
        Vocabulary id of each column, ``-1`` for genes outside the vocabulary.
    config
        Tokenizer settings.
    cls_id
        Vocabulary id of ``<cls>``.
    cell_labels
        Names of the rows, used in error messages only.
    modalities
        Multi-omic tokenization (:class:`ModalityLayout`, its ``measured`` rows aligned
        with ``matrix``'s): each modality of a cell is binned on its own (official), a cell
        gets no token of a modality it was not measured in (zeros included: mosaic data), and
        the tokens carry modality ids (``<cls>`` the ``<cls>`` modality id).

    Returns
    -------
    The :class:`TokenizedCells`.
    """
    csr = _as_csr(matrix)
    column_vocab_ids = np.asarray(column_vocab_ids, dtype=np.int64)
    check_expression_values(csr.data)
    n_cells = csr.shape[0]
    rows, gene_ids, raw, cols, mods = _expressed_entries(csr, column_vocab_ids, modalities)
    if modalities is not None:
        column_modality, measured = modalities.column_modality, modalities.measured
    n_expressed = np.bincount(rows, minlength=n_cells)
    indptr = np.zeros(n_cells + 1, dtype=np.int64)
    np.cumsum(n_expressed, out=indptr[1:])

    empty = np.flatnonzero(n_expressed == 0)
    if len(empty) and not config.allow_empty_cells:
        names = list(cell_labels[empty[:5]]) if cell_labels is not None else list(empty[:5])
        raise ValueError(
            f"{len(empty)} cells have no expressed gene in the model vocabulary (e.g. {names}). "
            "Remove empty cells first, e.g. `sc.pp.filter_cells(adata, min_genes=1)` on the "
            "genes the model knows."
        )

    seeds = cell_seeds(indptr, gene_ids, raw, config.seed)
    if config.n_bins is None:
        values = raw.astype(np.float32)
    else:
        uniforms = entry_uniform(seeds[rows], gene_ids, STREAM_TIES)
        if mods is None:
            values = bin_expression(indptr, raw, n_bins=config.n_bins, uniforms=uniforms)
        else:
            values = _bin_per_modality(rows, mods, raw, uniforms, n_cells, config.n_bins)
            values[np.isin(mods, modalities.presence_only)] = config.n_bins - 1
        values = values.astype(np.float32)

    if config.include_zero_genes:
        rows, cols, gene_ids, values = _with_zero_genes(
            n_cells, rows, cols, values, column_vocab_ids
        )
        if mods is not None:
            mods = column_modality[cols]
            keep_measured = measured[rows, mods]
            rows, gene_ids = rows[keep_measured], gene_ids[keep_measured]
            values, mods = values[keep_measured], mods[keep_measured]

    max_genes = config.max_seq_len - 1
    counts = np.bincount(rows, minlength=n_cells)
    if (counts > max_genes).any():
        keys = entry_uniform(seeds[rows], gene_ids, STREAM_SAMPLING)
        order = np.lexsort((keys, rows))
        starts = np.zeros(n_cells + 1, dtype=np.int64)
        np.cumsum(counts, out=starts[1:])
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order)) - starts[rows[order]]
        sampled = rank < max_genes
        rows, gene_ids, values = rows[sampled], gene_ids[sampled], values[sampled]
        mods = None if mods is None else mods[sampled]
        counts = np.minimum(counts, max_genes)

    # prepend <cls>: each cell's tokens move right by (its row index + 1)
    out_indptr = np.zeros(n_cells + 1, dtype=np.int64)
    np.cumsum(counts + 1, out=out_indptr[1:])
    total = int(out_indptr[-1])
    out_genes = np.empty(total, dtype=np.int64)
    out_values = np.empty(total, dtype=np.float32)
    cls_pos = out_indptr[:-1]
    out_genes[cls_pos] = cls_id
    out_values[cls_pos] = config.cls_value
    gene_pos = np.arange(len(rows)) + rows + 1
    out_genes[gene_pos] = gene_ids
    out_values[gene_pos] = values
    out_mods = None
    if mods is not None:
        out_mods = np.empty(total, dtype=np.int64)
        out_mods[cls_pos] = modalities.cls_id
        out_mods[gene_pos] = mods
    return TokenizedCells(
        indptr=out_indptr,
        gene_ids=out_genes,
        values=out_values,
        n_expressed=n_expressed,
        modality_ids=out_mods,
    )


def _bin_per_modality(rows, mods, raw, uniforms, n_cells, n_bins) -> np.ndarray:
    """Bins of each (cell, modality) group's values on their own quantiles (official)."""
    n_mod = int(mods.max()) + 1 if len(mods) else 1
    group = rows * n_mod + mods
    order = np.argsort(group, kind="stable")
    group_indptr = np.zeros(n_cells * n_mod + 1, dtype=np.int64)
    np.cumsum(np.bincount(group, minlength=n_cells * n_mod), out=group_indptr[1:])
    binned = bin_expression(group_indptr, raw[order], n_bins=n_bins, uniforms=uniforms[order])
    values = np.empty(len(raw), dtype=binned.dtype)
    values[order] = binned
    return values


def _with_zero_genes(n_cells, rows, cols, values, column_vocab_ids):
    """Add every in-vocabulary gene a cell does not express, with value 0, in column order."""
    vocab_cols = np.flatnonzero(column_vocab_ids >= 0)
    n_genes = len(vocab_cols)
    col_rank = np.full(len(column_vocab_ids), -1, dtype=np.int64)
    col_rank[vocab_cols] = np.arange(n_genes)
    dense = np.zeros((n_cells, n_genes), dtype=np.float32)
    dense[rows, col_rank[cols]] = values
    all_rows = np.repeat(np.arange(n_cells), n_genes)
    all_genes = np.tile(column_vocab_ids[vocab_cols], n_cells)
    all_cols = np.tile(vocab_cols, n_cells)
    return all_rows, all_cols, all_genes, dense.ravel()
