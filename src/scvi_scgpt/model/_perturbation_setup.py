"""Validation and registration of GEARS-format perturbation data in ``setup_anndata``."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from anndata import AnnData
from scvi.data.fields import CategoricalObsField

from scvi_scgpt.dataloaders import PERTURBATION_KEY
from scvi_scgpt.tl._perturbation_data import check_perturbation_obs

logger = logging.getLogger(__name__)

#: Values of a split column (``setup_anndata(split_key=...)``, ``tl.perturbation_split``).
SPLIT_VALUES = ("train", "val", "test")

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
    perturbation_key: str | None,
    control_group: str,
    layer: str | None,
    gene_symbols_key: str | None,
    split_key: str | None = None,
    transfer: bool = False,
) -> list[CategoricalObsField]:
    """Validate a GEARS condition column (and split column) and return its scvi-tools field.

    Parameters
    ----------
    adata
        The AnnData being set up (not modified here).
    perturbation_key, control_group
        Condition column (``"ctrl"``, ``"A+ctrl"``, ``"A+B"``) and control condition.
    layer, gene_symbols_key
        The ``setup_anndata`` arguments (expression and gene names).
    split_key
        Column of ``"train"`` / ``"val"`` / ``"test"`` per cell, or ``None``.
    transfer
        The setup is transferred from a model's registry (``SCGPT.load(dir, adata)``): the
        split column may then be absent (data to predict on have none).

    Returns
    -------
    The field registering the condition codes.

    Raises
    ------
    KeyError, ValueError
        For a missing column, no control cells, a malformed condition, a perturbed gene that
        is not measured, a condition with one cell, raw counts, a ``split_key`` without
        ``perturbation_key`` or a split value other than ``"train"`` / ``"val"`` / ``"test"``.
    """
    if perturbation_key is None:
        raise ValueError(
            f"split_key={split_key!r} holds out perturbation conditions: pass "
            "perturbation_key too, e.g. SCGPT.setup_anndata(adata, perturbation_key="
            f"'condition', split_key={split_key!r})."
        )
    genes = adata.var_names if gene_symbols_key is None else adata.var[gene_symbols_key]
    check_perturbation_obs(
        adata,
        perturbation_key=perturbation_key,
        control_group=control_group,
        genes=np.asarray(genes, dtype=str),
        min_cells=2,
    )
    if split_key is not None and not (transfer and split_key not in adata.obs):
        check_split(adata, split_key)
    matrix = adata.X if layer is None else adata.layers[layer]
    check_log_normalised(matrix, "adata.X" if layer is None else f"adata.layers[{layer!r}]")
    return [CategoricalObsField(PERTURBATION_KEY, perturbation_key)]


def check_split(adata: AnnData, split_key: str) -> None:
    """Raise unless ``adata.obs[split_key]`` holds only ``"train"`` / ``"val"`` / ``"test"``."""
    if split_key not in adata.obs:
        raise KeyError(
            f"split_key={split_key!r} is not a column of adata.obs (columns: "
            f"{list(adata.obs.columns)}); write one with "
            f"tl.perturbation_split(adata, key_added={split_key!r})."
        )
    column = adata.obs[split_key]
    values = set(column.dropna().astype(str).unique())
    bad = sorted(values - set(SPLIT_VALUES))
    if bad or column.isna().any():
        shown = bad[:5] if bad else ["<missing>"]
        raise ValueError(
            f"adata.obs[{split_key!r}] must hold {list(SPLIT_VALUES)} for every cell; found "
            f"{shown}. Map every cell to one of them (training cells 'train')."
        )


#: Where :func:`resolve_split` reads the split of data set up without ``split_key``.
COMPAT_SPLIT = "obs['split']"


def resolve_split(
    adata: AnnData, split_key: str | None, indexing: Sequence | None = None, *, log: bool = True
) -> tuple[np.ndarray | None, str]:
    """Per cell ``"train"`` / ``"val"`` / ``"test"`` (``""``: unused), and where it comes from.

    In order: ``indexing`` (the ``external_indexing`` given to
    ``train(datasplitter_kwargs=...)``, or the cells of the model's training), the
    registered ``split_key`` column, and for compatibility ``obs["split"]`` when no
    ``split_key`` was registered. ``None`` when there is no split.

    Parameters
    ----------
    adata
        The cells.
    split_key
        The registered split column (absent from ``adata``: no split).
    indexing
        Train, validation (and test) cell indices, or ``None``.
    log
        Log (info) that ``obs["split"]`` is read without a registered ``split_key``.

    Returns
    -------
    The per-cell split (or ``None``) and a description of its source (:data:`COMPAT_SPLIT`
    for the compatibility column).
    """
    if indexing is not None:
        labels = np.full(adata.n_obs, "", dtype="<U5")
        for name, rows in zip(SPLIT_VALUES, indexing, strict=False):
            labels[np.asarray(rows, dtype=np.int64)] = name
        return labels, "datasplitter_kwargs['external_indexing']"
    if split_key is None and "split" in adata.obs:
        if log:
            logger.info(
                "No split_key registered: obs['split'] holds the cells out (as before); "
                "register it with SCGPT.setup_anndata(..., split_key='split')."
            )
        return adata.obs["split"].astype(str).to_numpy(), COMPAT_SPLIT
    if split_key is None:
        return None, "no split_key, no obs['split']"
    if split_key not in adata.obs:
        return None, f"split_key {split_key!r} is not a column of this AnnData"
    return adata.obs[split_key].astype(str).to_numpy(), f"obs[{split_key!r}]"


def trained_indexing(model, n_obs: int) -> list[np.ndarray] | None:
    """The train / validation / test cells of ``model``'s last training, if it kept them.

    Parameters
    ----------
    model
        A trained model (``train_indices_``, ``validation_indices_``, ``test_indices_``, as
        ``train`` stores and ``save`` keeps them).
    n_obs
        Cells of the model's AnnData (indices outside it: not this AnnData's training).

    Returns
    -------
    The three index arrays, or ``None`` (no training with cell indices, e.g. from a
    datamodule, or indices that do not fit).
    """
    parts = [getattr(model, f"{p}_indices_", None) for p in ("train", "validation", "test")]
    if parts[0] is None:
        return None
    arrays = [np.asarray([] if p is None else p, dtype=np.int64).ravel() for p in parts]
    if any(len(a) and (a.min() < 0 or a.max() >= n_obs) for a in arrays):
        return None
    return arrays


def training_split(model, adata: AnnData) -> tuple[np.ndarray | None, str]:
    """Per cell ``"train"`` / ``"val"`` / ``"test"`` (``""``: unused) of ``model``'s training.

    While ``train`` runs: the ``external_indexing`` it was given, else the registered
    ``split_key`` column (``obs["split"]`` without one, logged once per training). After
    training, on the model's own AnnData: the cells that training used
    (:func:`trained_indexing`), so that cells held out through ``external_indexing`` stay
    out (e.g. of reverse perturbation's default candidates) whatever ``obs`` holds.

    Parameters
    ----------
    model
        The perturbation model.
    adata
        The cells (set up for ``model``).

    Returns
    -------
    The per-cell split (``None``: no split) and where it comes from.
    """
    args = model.get_anndata_manager(adata, required=True).registry["setup_args"]
    indexing, source = None, None
    if adata is model.adata:
        indexing = getattr(model, "_heldout_indexing", None)
        if indexing is None and not getattr(model, "_training_now", False):
            indexing = trained_indexing(model, adata.n_obs)
            if indexing is not None:
                source = "the cells of the model's training (train_indices_, ...)"
    quiet = getattr(model, "_split_logged", False)
    split, where = resolve_split(adata, args.get("split_key"), indexing, log=not quiet)
    if where == COMPAT_SPLIT:
        model._split_logged = True
    return split, source or where


def warn_if_leaking(split: np.ndarray | None, source: str, stacklevel: int = 2) -> None:
    """Warn when no cell is held out: every training statistic then reads every cell."""
    if split is not None and np.isin(split, ("val", "test")).any():
        return
    warnings.warn(
        f"No held-out perturbation cells ({source}): the additive prior, the control mean, "
        "the WMSE weights and the control pool read every cell, so evaluating on any "
        "condition of these data would leak. Hold conditions out with "
        "tl.perturbation_split(adata, key_added='split') and SCGPT.setup_anndata(..., "
        "split_key='split'), or train(datasplitter_kwargs={'external_indexing': [train, "
        "val, test]}).",
        UserWarning,
        stacklevel=stacklevel,
    )
