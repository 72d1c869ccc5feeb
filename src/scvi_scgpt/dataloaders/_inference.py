"""Inference batching: cells tokenized in chunks and batched by length under a token budget."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from scvi_scgpt._constants import TOKEN_KEYS
from scvi_scgpt.data import CellSource, ModalityLayout, TokenizerConfig, tokenize_cells


def iter_token_batches(
    matrix,
    indices: np.ndarray,
    column_vocab_ids: np.ndarray,
    tokenizer: TokenizerConfig,
    *,
    cls_id: int,
    pad_id: int,
    batch_size: int,
    chunk_size: int = 4096,
    max_tokens: int | None = None,
    cell_labels: np.ndarray | None = None,
    batch_codes: np.ndarray | None = None,
    modalities: ModalityLayout | None = None,
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Yield ``(positions in indices, padded token arrays)``, length-sorted per chunk.

    ``chunk_size`` cells are tokenized at once (vectorized over the CSR rows); within a chunk
    cells are sorted by length, so batches carry little padding. A batch holds at most
    ``batch_size`` cells and, with ``max_tokens``, at most ``max_tokens`` padded tokens (long
    cells go in smaller batches), which bounds activation memory.

    Parameters
    ----------
    matrix
        ``(n_obs, n_vars)`` expression (CSR, dense or backed), or a one-part
        :class:`~scvi_scgpt.data.CellSource`; only rows in ``indices`` are read.
    indices
        Rows to tokenize.
    column_vocab_ids
        Vocabulary id of each column (``-1``: not used).
    tokenizer
        Tokenizer settings.
    cls_id, pad_id
        Special token ids.
    batch_size, chunk_size, max_tokens
        Cells per batch, cells tokenized at once, padded-token budget per batch.
    cell_labels
        Per-row identity of each cell (e.g. ``obs_names``) that seeds its random choices, so a
        cell's tokens do not depend on which other cells are processed.
    batch_codes
        Per-row batch code; added to each batch as ``TOKEN_KEYS.BATCH``.
    modalities
        Multi-omic matrices: the columns' modalities and the cells measured in each (rows
        aligned with ``matrix``); batches then carry ``TOKEN_KEYS.MODALITY_IDS``.
    """
    if batch_size < 1 or chunk_size < 1:
        raise ValueError("batch_size and chunk_size must be positive.")
    for start in range(0, len(indices), chunk_size):
        chunk = indices[start : start + chunk_size]
        # token row j is cell chunk[order[j]]; backed matrices want sorted indices
        order = np.argsort(chunk, kind="stable")
        rows_read = chunk[order]
        cells = (
            matrix.read_rows(0, rows_read) if isinstance(matrix, CellSource) else matrix[rows_read]
        )
        tokens = tokenize_cells(
            cells,
            column_vocab_ids,
            tokenizer,
            cls_id=cls_id,
            cell_labels=None if cell_labels is None else cell_labels[rows_read],
            modalities=None if modalities is None else modalities.rows(rows_read),
        )
        modality_pad_id = 0 if modalities is None else modalities.pad_id
        by_length = np.argsort(-tokens.lengths, kind="stable")
        b = 0
        while b < len(by_length):
            width = int(tokens.lengths[by_length[b]])  # the longest of this batch
            n = batch_size if max_tokens is None else max(1, min(batch_size, max_tokens // width))
            rows = by_length[b : b + n]
            b += n
            padded = tokens.pad(
                rows,
                pad_id=pad_id,
                pad_value=tokenizer.pad_value,
                modality_pad_id=modality_pad_id,
            )
            if batch_codes is not None:
                padded[TOKEN_KEYS.BATCH] = batch_codes[rows_read[rows]]
            yield start + order[rows], padded
