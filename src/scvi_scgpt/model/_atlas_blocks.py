"""Pieces of an atlas run: output columns, cells without a result, one block's results."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from scvi_scgpt.data import CellSource, RowBlock
from scvi_scgpt.data._tokenize import empty_cell_mask

#: What ``embed_atlas`` does with cells that have no expressed vocabulary gene.
EMPTY_CELL_POLICIES = ("nan", "raise")


def output_columns(
    source: CellSource,
    obs_columns: Sequence[str],
    part_column: str | None,
    labels_key_added: str | None,
) -> dict[str, str]:
    """Kind of every output ``obs`` column; copied columns from the source's schema.

    Parameters
    ----------
    source
        The cells.
    obs_columns
        Source ``obs`` columns copied to the output.
    part_column
        Name of the column naming each cell's part (collections), or ``None``.
    labels_key_added
        The predicted-label column (and its ``_confidence``), or ``None``.

    Returns
    -------
    Column name -> kind (see ``data._obs_schema``).

    Raises
    ------
    ValueError
        A column that the parts of a collection store in types no single type holds
        without loss (raised before anything is written).
    """
    columns = dict(source.obs_dtypes(obs_columns))
    if part_column:
        columns[part_column] = "str"
    if labels_key_added:
        columns[labels_key_added] = "str"
        columns[f"{labels_key_added}_confidence"] = "float32"
    return columns


def find_empty_cells(seg: RowBlock, column_ids: np.ndarray) -> np.ndarray:
    """Mask of the cells of ``seg`` with no expressed vocabulary gene.

    These are the cells tokenization refuses (no token besides ``<cls>``); the rule is the
    tokenizer's own (:func:`~scvi_scgpt.data._tokenize.empty_cell_mask`).

    Parameters
    ----------
    seg
        The cells (their expression and, for multi-omic rows, modality layout).
    column_ids
        Vocabulary id of each column of the segment's part (``-1``: not in the vocabulary).

    Returns
    -------
    ``(n_cells,)`` bool mask, ``True`` for empty cells.
    """
    return empty_cell_mask(seg.X, column_ids, seg.modalities)


def nonfinite_cells(
    emb: np.ndarray,
    probs: np.ndarray | None,
    empty: np.ndarray,
    retry: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]] | None,
) -> np.ndarray:
    """Mask of the cells whose embedding is not finite however computed; their rows NaN.

    A cell (other than the ``empty`` ones) whose row of ``emb`` is not finite (e.g. a
    bfloat16 overflow) is computed once more by ``retry`` (in float32); the rows it gives
    replace the first ones. Cells still not finite get NaN rows in ``emb`` and ``probs``
    (changed in place).

    Parameters
    ----------
    emb, probs
        The segment's embeddings and class probabilities (``None``: no classifier).
    empty
        Mask of the empty cells (NaN rows already, never retried).
    retry
        ``skip mask -> (emb, probs)`` computing the cells not skipped again, or ``None``
        (the run was in float32 already).

    Returns
    -------
    ``(n_cells,)`` bool mask of the cells left without a result.
    """
    bad = ~np.isfinite(emb).all(axis=1) & ~empty
    if bad.any() and retry is not None:
        again, again_probs = retry(~bad)
        emb[bad] = again[bad]
        if probs is not None:
            probs[bad] = again_probs[bad]
        bad &= ~np.isfinite(emb).all(axis=1)
    emb[bad] = np.nan
    if probs is not None:
        probs[bad] = np.nan
    return bad


def block_result(
    segments: list[RowBlock],
    outputs: list[tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]],
    *,
    key_added: str,
    obs_columns: Sequence[str],
    part_names: Sequence[str] | None,
    classes: np.ndarray | None,
    labels_key_added: str | None,
) -> dict:
    """One block's results, as the atlas writer takes them.

    Parameters
    ----------
    segments
        The block's segments.
    outputs
        Per segment: embeddings, class probabilities, and the masks of its empty and its
        non-finite cells (which have NaN rows).
    key_added
        ``obsm`` key of the embeddings.
    obs_columns
        Source ``obs`` columns copied to the output.
    part_names
        Names of the source's parts (a ``source_part`` column), or ``None``.
    classes, labels_key_added
        The classifier's classes and the label column (``None``: no labels).

    Returns
    -------
    ``{"obsm", "obs", "empty", "nonfinite"}``: cells without a result (empty or non-finite)
    have NaN rows, no label and a NaN confidence.
    """
    empty = np.concatenate([o[2] for o in outputs])
    nonfinite = np.concatenate([o[3] for o in outputs])
    obs = {c: np.concatenate([s.obs[c] for s in segments]) for c in obs_columns}
    if part_names is not None:
        obs["source_part"] = np.concatenate(
            [np.full(len(s.rows), part_names[s.part], dtype=object) for s in segments]
        )
    if classes is not None:
        probs = np.concatenate([o[1] for o in outputs])
        labels = classes[np.nan_to_num(probs, nan=0.0).argmax(1)].astype(object)
        labels[empty | nonfinite] = None
        obs[labels_key_added] = labels
        obs[f"{labels_key_added}_confidence"] = probs.max(1)
    return {
        "obsm": {key_added: np.concatenate([o[0] for o in outputs])},
        "obs": obs,
        "empty": np.flatnonzero(empty),
        "nonfinite": np.flatnonzero(nonfinite),
    }
