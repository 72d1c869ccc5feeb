"""Validation and registration of GEARS-format perturbation data in ``setup_anndata``."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from anndata import AnnData
from scvi.data.fields import CategoricalObsField

from scvi_scgpt.dataloaders import PERTURBATION_KEY
from scvi_scgpt.tl._perturbation_data import check_perturbation_obs

#: Largest value of GEARS' log-normalised expression (``log1p`` of counts per 10,000 is at
#: most ``log1p(1e4)`` = 9.2); larger values are taken for unnormalised data.
MAX_LOG_VALUE = 15.0


def check_log_normalised(matrix, where: str) -> None:
    """Raise for raw counts: the perturbation model reads log-normalised expression.

    Parameters
    ----------
    matrix
        The registered expression (dense or sparse).
    where
        Its name for messages (e.g. ``"adata.X"``).
    """
    values = matrix.data if sp.issparse(matrix) else np.asarray(matrix).ravel()
    values = values[values != 0]
    if not len(values):
        raise ValueError(f"{where} holds no non-zero value.")
    integer = bool(np.all(np.equal(np.mod(values, 1), 0)))
    if integer or values.max() > MAX_LOG_VALUE:
        raise ValueError(
            f"{where} looks like raw counts (integers or values above {MAX_LOG_VALUE:g}); the "
            "perturbation model reads log-normalised expression as GEARS stores it: run "
            "scanpy.pp.normalize_total(adata, target_sum=1e4) and scanpy.pp.log1p(adata) "
            "(or register such a layer) first. Nothing is normalised on the fly."
        )


def perturbation_fields(
    adata: AnnData,
    *,
    perturbation_key: str,
    control_group: str,
    layer: str | None,
    gene_symbols_key: str | None,
) -> list[CategoricalObsField]:
    """Validate a GEARS condition column and return its scvi-tools field.

    Parameters
    ----------
    adata
        The AnnData being set up (not modified here).
    perturbation_key, control_group
        Condition column (``"ctrl"``, ``"A+ctrl"``, ``"A+B"``) and control condition.
    layer, gene_symbols_key
        The ``setup_anndata`` arguments (expression and gene names).

    Returns
    -------
    The field registering the condition codes.

    Raises
    ------
    KeyError, ValueError
        For a missing column, no control cells, a malformed condition, a perturbed gene that
        is not measured, a condition with one cell, or raw counts.
    """
    genes = adata.var_names if gene_symbols_key is None else adata.var[gene_symbols_key]
    check_perturbation_obs(
        adata,
        perturbation_key=perturbation_key,
        control_group=control_group,
        genes=np.asarray(genes, dtype=str),
        min_cells=2,
    )
    matrix = adata.X if layer is None else adata.layers[layer]
    check_log_normalised(matrix, "adata.X" if layer is None else f"adata.layers[{layer!r}]")
    return [CategoricalObsField(PERTURBATION_KEY, perturbation_key)]
