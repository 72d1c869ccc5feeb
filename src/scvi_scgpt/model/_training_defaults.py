"""What ``SCGPT.train`` decides around the fit: regime and values, best epoch, trivial check."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS, settings

from scvi_scgpt.train import (
    HYPERPARAMETERS,
    BestEpoch,
    NoBetterThanTrivialWarning,
    TaskPreset,
    majority_class,
    majority_class_rate,
    no_better_than_trivial,
    per_gene_mean_mse,
    trivial_warning,
)

REGIMES = ("fine_tune", "from_scratch")
_REGIME_WORDS = {
    "fine_tune": "fine-tune regime (official tutorial values; {why})",
    "from_scratch": "from-scratch regime ({why})",
}
#: Minibatches read to fit and to score the per-gene-mean predictor.
TRIVIAL_MAX_BATCHES = 50


def highly_variable_columns(
    matrix, n_top: int, batches: np.ndarray | None, *, counts_error: str
) -> np.ndarray:
    """Boolean mask of the ``n_top`` highly variable columns (scanpy ``seurat_v3``).

    Parameters
    ----------
    matrix
        ``(n_cells, n_columns)`` raw counts (sparse or dense).
    n_top
        Columns to keep.
    batches
        Per-cell batch labels (HVGs per batch, as seurat_v3 does), or ``None``.
    counts_error
        Message of the ``ValueError`` raised when ``matrix`` is not integer counts.
    """
    import scanpy as sc

    data = matrix.data if sp.issparse(matrix) else np.asarray(matrix)
    if not np.all(np.equal(np.mod(data, 1), 0)):
        raise ValueError(counts_error)
    view = AnnData(matrix)
    if batches is not None:
        view.obs["hvg_batch"] = np.asarray(batches)
    hvg = sc.pp.highly_variable_genes(
        view,
        flavor="seurat_v3",
        n_top_genes=n_top,
        batch_key=None if batches is None else "hvg_batch",
        inplace=False,
    )
    return np.asarray(hvg["highly_variable"], dtype=bool)


def detect_regime(model, regime: str = "auto") -> tuple[str, str]:
    """``(regime, reason)``: ``"fine_tune"`` for a pretrained or trained model.

    Parameters
    ----------
    model
        The SCGPT model.
    regime
        ``"auto"`` to detect it, or a regime to force.
    """
    if regime != "auto":
        if regime not in REGIMES:
            raise ValueError(f"regime must be 'auto' or one of {REGIMES}, got {regime!r}.")
        return regime, "requested"
    if model.is_trained_:
        why = "pretrained weights" if model.checkpoint_audit_ is not None else "a trained model"
        return "fine_tune", why
    return "from_scratch", "randomly initialised model"


def resolve_hyperparameters(
    preset: TaskPreset, regime: str, given: dict[str, Any], n_train_cells: int | None = None
) -> tuple[dict[str, Any], list[str]]:
    """The regime's values with every explicitly given (not ``None``) argument winning.

    ``max_epochs``, when not given, is scaled to ``n_train_cells`` in the from-scratch regime
    of a preset with ``from_scratch_steps`` (:meth:`~scvi_scgpt.train.TaskPreset.epochs_for`).

    Returns
    -------
    ``(values, names of the given ones)``.
    """
    values = preset.for_regime(regime).hyperparameters()
    explicit = [k for k in HYPERPARAMETERS if given.get(k) is not None]
    values.update({k: given[k] for k in explicit})
    if "max_epochs" not in explicit:
        values["max_epochs"] = preset.epochs_for(regime, n_train_cells, values["batch_size"])
    return values, explicit


def regime_line(
    task: str,
    regime: str,
    why: str,
    values: dict[str, Any],
    explicit: list[str],
    best: BestEpoch | None,
) -> str:
    """The one log line saying which regime and values ``train`` uses."""
    parts = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()]
    parts = [p + (" (given)" if k in explicit else "") for p, k in zip(parts, values)]
    if best is not None and best.restore:
        keep = f"best epoch by {best.monitor} ({best.mode}) restored"
    else:
        keep = "last epoch kept"
    words = _REGIME_WORDS[regime].format(why=why)
    return f"train({task!r}): {words}: {', '.join(parts)}; {keep}."


def record_best_epoch(model, best: BestEpoch) -> dict:
    """Add this fit's best epoch to ``model.history_["best_epoch"]``; return its summary.

    The epoch is the index of ``history_[best.monitor]`` (continued training appends to it).
    """
    summary = best.summary()
    history = model.history_
    if not best.restored or not isinstance(history, dict) or best.monitor not in history:
        return summary
    column = history[best.monitor]
    row = len(column) - best.n_validated + (best.best_index or 0)
    if 0 <= row < len(column):
        summary["epoch"] = int(column.index[row])
    new = pd.DataFrame(
        {
            "best_epoch": [summary["epoch"]],
            "monitor": [best.monitor],
            "value": [best.best_value],
        }
    )
    old = history.get("best_epoch")
    history["best_epoch"] = new if old is None else pd.concat([old, new], ignore_index=True)
    history["best_epoch"].index.name = "train_call"
    return summary


def _label_names(model) -> np.ndarray:
    state = model.adata_manager.get_state_registry(REGISTRY_KEYS.LABELS_KEY)
    return np.asarray(state.categorical_mapping)


def check_against_trivial(
    model,
    *,
    task: str,
    objectives,
    regime: str,
    values: dict[str, Any],
    preset: TaskPreset,
    best: BestEpoch | None,
    data_splitter,
    n_val: int | None,
) -> dict | None:
    """Compare the trained model with the trivial predictor on its validation cells.

    Classification: validation accuracy against the training majority class's rate.
    Expression objectives: validation GEP (or GEPC) MSE against the per-gene-mean
    predictor's on the same validation minibatches. Warns with
    :class:`~scvi_scgpt.train.NoBetterThanTrivialWarning` when the model is no better.

    Returns
    -------
    ``{"metric", "value", "trivial", "baseline", "no_better"}``, or ``None`` when there is
    no validation metric to compare.
    """
    if best is None or not best.last_metrics:
        return None
    metrics = best.metrics()
    if objectives.cls and "cls_accuracy_validation" in metrics:
        idx = getattr(data_splitter, "val_idx", None)
        train_idx = getattr(data_splitter, "train_idx", None)
        if idx is None or train_idx is None or len(idx) == 0:
            return None
        codes = np.asarray(model.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY))
        codes = codes.reshape(-1)
        code, _ = majority_class(codes[train_idx])
        names = _label_names(model)
        name = names[int(code)] if int(code) < len(names) else code
        check = {
            "metric": "accuracy",
            "value": metrics["cls_accuracy_validation"],
            "trivial": majority_class_rate(codes[idx], reference=codes[train_idx]),
            "baseline": f"always predicting the training majority class {str(name)!r}",
        }
        higher = True
    else:
        key, weight = None, 1.0
        if objectives.gep and "gep_validation" in metrics:
            key, weight, label = "gep_validation", objectives.gep_weight, "GEP MSE"
        elif objectives.gepc and "gepc_validation" in metrics:
            key, weight, label = "gepc_validation", objectives.gepc_weight, "GEPC MSE"
        if key is None or weight == 0 or not hasattr(data_splitter, "train_dataloader"):
            return None
        with torch.random.fork_rng():
            torch.manual_seed(settings.seed or 0)
            trivial = per_gene_mean_mse(
                data_splitter.train_dataloader(),
                data_splitter.val_dataloader(),
                len(model.vocab_),
                ignore_ids=(model.vocab_.cls_id,),
                max_batches=TRIVIAL_MAX_BATCHES,
            )
        check = {
            "metric": label,
            "value": metrics[key] / weight,
            "trivial": trivial,
            "baseline": "predicting each gene's mean training value (bin)",
        }
        higher = False
    check["no_better"] = bool(
        no_better_than_trivial(check["value"], check["trivial"], higher_is_better=higher)
    )
    if check["no_better"]:
        scratch = preset.for_regime("from_scratch")
        text = trivial_warning(
            task=task,
            metric=check["metric"],
            value=check["value"],
            trivial=check["trivial"],
            baseline=check["baseline"],
            n_cells=n_val,
            regime=regime,
            lr=values["lr"],
            max_epochs=values["max_epochs"],
            from_scratch_lr=scratch.lr,
            from_scratch_epochs=scratch.max_epochs,
        )
        warnings.warn(text, NoBetterThanTrivialWarning, stacklevel=settings.warnings_stacklevel)
    return check
