"""Attention-based targets of perturbed genes (the official attention-GRN procedure).

Raw attention scores (q·kᵀ, no scaling, no softmax) are rank-normalised along each row
(query), then along each column (key), averaged over heads and over the cells of each
condition. The targets of a perturbed gene are read from its column (scores *to* it: how much
every query gene attends to it), ranked in the perturbed, the control or the difference matrix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from scvi_scgpt.tl._conditions import parse_condition

MODES = ("control", "perturbed", "difference")


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def rank_normalize(scores: Any, *, axis: int = -1) -> Any:
    """Replace each value by its rank along ``axis`` divided by the axis length.

    The smallest value gets ``0``, the largest ``(M - 1) / M`` (official: double argsort,
    divided by ``M``); ties are broken by position (stable sort), so the result is
    deterministic.

    Parameters
    ----------
    scores
        NumPy array or torch tensor.
    axis
        Axis to rank along.

    Returns
    -------
    Float array (or tensor, on the same device) of the input's shape.
    """
    if _is_torch(scores):
        m = scores.shape[axis]
        order = scores.argsort(dim=axis, stable=True)
        ranks = order.argsort(dim=axis, stable=True)
        ranks = ranks.to(scores.dtype) if scores.is_floating_point() else ranks.float()
        return ranks / m
    x = np.asarray(scores)
    m = x.shape[axis]
    order = np.argsort(x, axis=axis, kind="stable")
    ranks = np.argsort(order, axis=axis, kind="stable")
    return ranks.astype(np.float32) / np.float32(m)


def normalize_attention(scores: Any, *, head_axis: int | None = -3) -> Any:
    """Official attention-GRN normalisation of raw per-head scores.

    Parameters
    ----------
    scores
        Raw q·kᵀ scores of shape ``(..., heads, M, M)`` (query rows, key columns); NumPy or
        torch.
    head_axis
        Axis of the heads, averaged away; ``None`` when there is no head axis.

    Returns
    -------
    Rank-normalised along rows, then along columns, then averaged over heads: shape
    ``(..., M, M)`` (``(..., heads, M, M)`` when ``head_axis`` is ``None``).
    """
    if scores.shape[-1] != scores.shape[-2]:
        raise ValueError(f"Attention scores must be square in the last two axes: {scores.shape}.")
    by_rows = rank_normalize(scores, axis=-1)
    by_cols = rank_normalize(by_rows, axis=-2)
    if head_axis is None:
        return by_cols
    return by_cols.mean(head_axis) if _is_torch(by_cols) else by_cols.mean(axis=head_axis)


class AttentionAccumulator:
    """Running sum of normalised attention matrices per condition, for bounded memory.

    Parameters
    ----------
    n_genes
        Side ``M`` of the matrices.
    """

    def __init__(self, n_genes: int) -> None:
        self.n_genes = int(n_genes)
        self._sums: dict[str, np.ndarray] = {}
        self._counts: dict[str, int] = {}

    def add(self, condition: str, matrices: Any) -> None:
        """Add ``(n_cells, M, M)`` normalised matrices (NumPy or torch) of one condition."""
        if _is_torch(matrices):
            total = matrices.double().sum(0).cpu().numpy()
        else:
            total = np.asarray(matrices, dtype=np.float64).sum(0)
        if total.shape != (self.n_genes, self.n_genes):
            raise ValueError(
                f"Expected matrices of side {self.n_genes}, got {tuple(matrices.shape)}."
            )
        if condition in self._sums:
            self._sums[condition] += total
        else:
            self._sums[condition] = total
        self._counts[condition] = self._counts.get(condition, 0) + int(matrices.shape[0])

    def add_sum(self, condition: str, total: Any, n_cells: int) -> None:
        """Add the ``(M, M)`` sum (NumPy or torch) of ``n_cells`` normalised matrices."""
        if _is_torch(total):
            total = total.double().cpu().numpy()
        total = np.asarray(total, dtype=np.float64)
        if total.shape != (self.n_genes, self.n_genes):
            raise ValueError(f"Expected a matrix of side {self.n_genes}, got {total.shape}.")
        if int(n_cells) < 1:
            raise ValueError(f"Condition {condition!r} has no cell.")
        self._sums[condition] = self._sums.get(condition, 0.0) + total
        self._counts[condition] = self._counts.get(condition, 0) + int(n_cells)

    def means(self) -> dict[str, np.ndarray]:
        """Mean matrix of each condition (float32)."""
        return {c: (s / self._counts[c]).astype(np.float32) for c, s in self._sums.items()}

    def counts(self) -> dict[str, int]:
        """Number of cells added per condition."""
        return dict(self._counts)


def attention_target_table(
    means: Mapping[str, np.ndarray],
    genes: Sequence[str],
    *,
    control: str,
    perturbed: str | Sequence[str],
    mode: str = "difference",
    top_k: int | None = 20,
    exclude_perturbed: bool = True,
) -> pd.DataFrame:
    """Rank the genes most influenced by each perturbed gene.

    Parameters
    ----------
    means
        Condition -> mean normalised attention matrix ``(M, M)`` over ``genes``
        (query rows, key columns).
    genes
        The ``M`` genes of the matrices.
    control
        Control condition (needed by ``mode="control"`` and ``"difference"``).
    perturbed
        One perturbed condition or a list of them (GEARS spelling; the perturbed genes are read
        from the name; a double averages the columns of its two genes).
    mode
        ``"perturbed"``: the perturbed matrix; ``"control"``: the control matrix;
        ``"difference"``: perturbed minus control.
    top_k
        Rows kept per perturbation (``None``: all genes).
    exclude_perturbed
        Leave the perturbed genes themselves out of their own ranking.

    Returns
    -------
    Long DataFrame with columns ``perturbation``, ``gene``, ``score``, ``rank`` (rank 1 =
    most influenced), ``top_k`` rows per perturbed condition.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} must be one of {MODES}.")
    if top_k is not None and int(top_k) < 1:
        raise ValueError(f"top_k={top_k} must be at least 1.")
    conditions = [perturbed] if isinstance(perturbed, str) else list(perturbed)
    if not conditions:
        raise ValueError("No perturbed condition given.")
    genes = pd.Index([str(g) for g in genes])
    position = {g: i for i, g in enumerate(genes)}
    needed = list(conditions) + ([control] if mode != "perturbed" else [])
    missing = [c for c in needed if c not in means]
    if missing:
        raise ValueError(f"No attention matrix for condition(s) {missing}.")
    rows = []
    for condition in conditions:
        targets = parse_condition(condition)
        if not targets:
            raise ValueError(f"Condition {condition!r} perturbs no gene.")
        absent = [g for g in targets if g not in position]
        if absent:
            raise ValueError(
                f"Perturbed gene(s) {absent} of condition {condition!r} are not among the "
                "genes of the attention matrices."
            )
        cols = [position[g] for g in targets]
        if mode == "perturbed":
            matrix = means[condition]
        elif mode == "control":
            matrix = means[control]
        else:
            matrix = means[condition].astype(np.float64) - means[control]
        score = np.asarray(matrix, dtype=np.float64)[:, cols].mean(1)
        keep = np.ones(len(genes), dtype=bool)
        if exclude_perturbed:
            keep[cols] = False
        idx = np.flatnonzero(keep)
        order = idx[np.argsort(-score[idx], kind="stable")]
        if top_k is not None:
            order = order[: int(top_k)]
        rows.append(
            pd.DataFrame(
                {
                    "perturbation": condition,
                    "gene": genes[order],
                    "score": score[order],
                    "rank": np.arange(1, len(order) + 1),
                }
            )
        )
    return pd.concat(rows, ignore_index=True)
