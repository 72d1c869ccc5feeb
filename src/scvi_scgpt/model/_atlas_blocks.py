"""Pieces of an atlas run: output columns, empty cells, and one block's results."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scvi_scgpt.data import CellSource, RowBlock

#: What ``embed_atlas`` does with cells that have no expressed vocabulary gene.
EMPTY_CELL_POLICIES = ("nan", "raise")


def output_columns(
    source: CellSource,
    obs_columns: Sequence[str],
    part_column: str | None,
    labels_key_added: str | None,
) -> dict[str, str]:
    """Kind of every output ``obs`` column; copied columns from the source's schema.

    Raises a ``ValueError`` (before anything is written) for a column that the parts of a
    collection store in types no single type holds without loss.
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

    These are the cells tokenization refuses (no token besides ``<cls>``): no nonzero value
    in a vocabulary column (and, for multi-omic rows, in a modality the cell was measured in).
    """
    X = seg.X
    n = X.shape[0]
    rows = np.repeat(np.arange(n), np.diff(X.indptr))
    keep = (np.asarray(column_ids)[X.indices] >= 0) & (X.data != 0)
    if seg.modalities is not None:
        keep &= seg.modalities.measured[rows, seg.modalities.column_modality[X.indices]]
    return np.bincount(rows[keep], minlength=n) == 0


def block_result(
    segments: list[RowBlock],
    outputs: list[tuple[np.ndarray, np.ndarray | None, np.ndarray]],
    *,
    key_added: str,
    obs_columns: Sequence[str],
    part_names: Sequence[str] | None,
    classes: np.ndarray | None,
    labels_key_added: str | None,
) -> dict:
    """One block's results, ``{"obsm", "obs", "empty"}``, as the atlas writer takes them.

    ``outputs`` holds each segment's embedding, class probabilities and empty-cell mask;
    empty cells get NaN rows, no label and a NaN confidence.
    """
    empty = np.concatenate([e for _, _, e in outputs])
    obs = {c: np.concatenate([s.obs[c] for s in segments]) for c in obs_columns}
    if part_names is not None:
        obs["source_part"] = np.concatenate(
            [np.full(len(s.rows), part_names[s.part], dtype=object) for s in segments]
        )
    if classes is not None:
        probs = np.concatenate([p for _, p, _ in outputs])
        labels = classes[np.nan_to_num(probs, nan=0.0).argmax(1)].astype(object)
        labels[empty] = None
        obs[labels_key_added] = labels
        obs[f"{labels_key_added}_confidence"] = probs.max(1)
    return {
        "obsm": {key_added: np.concatenate([e for e, _, _ in outputs])},
        "obs": obs,
        "empty": np.flatnonzero(empty),
    }
