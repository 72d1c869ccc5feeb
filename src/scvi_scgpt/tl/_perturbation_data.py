"""GEARS-format perturbation data: condition validation and per-condition mean profiles."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from scvi_scgpt.tl._conditions import format_condition, parse_condition


def condition_genes(condition: str | Sequence[str], *, control: str = "ctrl") -> tuple[str, ...]:
    """Perturbed genes of a condition given as a GEARS string or as a list of genes.

    Parameters
    ----------
    condition
        ``"A+B"`` / ``"A+ctrl"`` / ``"ctrl"``, or a sequence of gene names.
    control
        The control token.

    Returns
    -------
    The genes, in the order given.

    Raises
    ------
    ValueError
        For a malformed string (``"A++B"``, ``"+"``, ``""``) or a repeated gene.
    """
    if isinstance(condition, str):
        return parse_condition(condition, control=control)
    genes = tuple(str(g).strip() for g in condition)
    if any(not g or g == control or "+" in g for g in genes):
        raise ValueError(f"Malformed perturbation {list(condition)!r}: gene names only.")
    if len(set(genes)) != len(genes):
        raise ValueError(f"Malformed perturbation {list(condition)!r}: a gene is repeated.")
    return genes


def canonical_condition(condition: str | Sequence[str], *, control: str = "ctrl") -> str:
    """GEARS spelling (``"A+ctrl"``, ``"A+B"``, ``"ctrl"``) of a condition."""
    return format_condition(condition_genes(condition, control=control), control=control)


def check_perturbation_obs(
    adata: AnnData,
    *,
    perturbation_key: str,
    control_group: str = "ctrl",
    genes: Iterable[str] | None = None,
    min_cells: int = 2,
) -> dict[str, tuple[str, ...]]:
    """Validate a GEARS condition column; return ``{condition: perturbed genes}``.

    Parameters
    ----------
    adata
        Cells with ``adata.obs[perturbation_key]``.
    perturbation_key
        Column of conditions (``"ctrl"``, ``"A+ctrl"``, ``"A+B"``).
    control_group
        Condition of the control cells (also the control token inside condition names).
    genes
        Genes a perturbation may name (default ``adata.var_names``).
    min_cells
        Fewest cells a condition may have.

    Returns
    -------
    The perturbed genes of every condition present (the control maps to ``()``).

    Raises
    ------
    KeyError
        When the column is missing.
    ValueError
        For no control cells, a malformed condition, an unknown perturbed gene or a condition
        with fewer than ``min_cells`` cells. Nothing is written into ``adata``.
    """
    if perturbation_key not in adata.obs.columns:
        raise KeyError(
            f"perturbation_key={perturbation_key!r} is not a column of adata.obs "
            f"(columns: {list(adata.obs.columns)})."
        )
    column = adata.obs[perturbation_key]
    if column.isna().any():
        raise ValueError(f"adata.obs[{perturbation_key!r}] has missing values.")
    counts = column.astype(str).value_counts()
    if control_group not in counts.index:
        raise ValueError(
            f"No control cells: control_group={control_group!r} is not a value of "
            f"adata.obs[{perturbation_key!r}] (values: {sorted(counts.index)[:10]})."
        )
    known = set(map(str, adata.var_names if genes is None else genes))
    parsed: dict[str, tuple[str, ...]] = {}
    for condition, n in counts.items():
        perturbed = parse_condition(condition, control=control_group)
        missing = [g for g in perturbed if g not in known]
        if missing:
            raise ValueError(
                f"Condition {condition!r} perturbs {missing}: not a measured gene (matched to "
                "the vocabulary) of this AnnData."
            )
        if n < min_cells:
            raise ValueError(
                f"Condition {condition!r} has {n} cell(s); at least {min_cells} are needed."
            )
        parsed[condition] = perturbed
    return parsed


def dense_rows(matrix, rows: np.ndarray | None = None) -> np.ndarray:
    """Selected rows of a dense or sparse matrix as a float64 array."""
    part = matrix if rows is None else matrix[rows]
    if sp.issparse(part):
        part = part.toarray()
    return np.asarray(part, dtype=np.float64)


def condition_means(
    adata: AnnData,
    *,
    perturbation_key: str = "condition",
    conditions: Sequence[str] | None = None,
    layer: str | None = None,
) -> pd.DataFrame:
    """Mean expression of each condition (conditions x genes).

    Parameters
    ----------
    adata
        Cells with ``adata.obs[perturbation_key]``.
    perturbation_key
        Condition column.
    conditions
        Conditions to return, in this order (default: every condition, sorted).
    layer
        Layer to average (default ``adata.X``).

    Returns
    -------
    DataFrame indexed by condition with ``adata.var_names`` as columns.
    """
    labels = adata.obs[perturbation_key].astype(str).to_numpy()
    matrix = adata.X if layer is None else adata.layers[layer]
    wanted = sorted(set(labels)) if conditions is None else list(conditions)
    out = np.empty((len(wanted), adata.n_vars))
    for i, cond in enumerate(wanted):
        rows = np.flatnonzero(labels == cond)
        if not len(rows):
            raise ValueError(f"No cells of condition {cond!r}.")
        out[i] = dense_rows(matrix, rows).mean(0)
    index = pd.Index(wanted, name=perturbation_key)
    return pd.DataFrame(out, index=index, columns=adata.var_names)
