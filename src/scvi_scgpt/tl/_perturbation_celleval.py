"""Calibrated perturbation metrics through cell-eval (Arc Institute, Virtual Cell Challenge).

cell-eval compares a predicted and a real AnnData of cells: the same genes in the same order,
a perturbation column with the same labels, and the control cells in both. Mean predictions
(``SCGPT.predict_perturbation``, the baselines) become predicted cells here: each condition's
cells are control cells shifted by the predicted change from the control mean (clipped at 0,
the log-normalised floor), so the predicted mean is the prediction up to that clipping and
the cell-to-cell spread is the control's. Everything is checked before cell-eval is called.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from scvi_scgpt.tl._perturbation_data import dense_rows

#: The cell-eval metrics reported by default: Pearson-delta, mean absolute error, the
#: perturbation discrimination score (L1, "PDS") and the overlap of the top DE genes ("DES").
CELL_EVAL_METRICS = ("pearson_delta", "mae", "mse", "discrimination_score_l1", "overlap_at_N")


def _import_cell_eval():
    try:
        from cell_eval import MetricsEvaluator
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "cell-eval is needed for the calibrated perturbation metrics: "
            "pip install 'scvi-scgpt[perturbation]' (or pip install cell-eval)."
        ) from err
    return MetricsEvaluator


def cell_eval_pair(
    pred: pd.DataFrame,
    truth: AnnData,
    *,
    perturbation_key: str = "condition",
    control_group: str = "ctrl",
    max_cells: int | None = 100,
    seed: int = 0,
) -> tuple[AnnData, AnnData]:
    """The (predicted, real) AnnData pair cell-eval expects, from predicted mean profiles.

    Parameters
    ----------
    pred
        Predicted mean expression, conditions x genes (every gene of ``truth``, no ``NaN``).
    truth
        Observed log-normalised cells with ``obs[perturbation_key]``, control included.
    perturbation_key, control_group
        Condition column and control condition (cell-eval's ``pert_col`` and
        ``control_pert``).
    max_cells
        Cells per condition in both objects (a seeded subsample; ``None``: all). A predicted
        condition has as many cells as its real one.
    seed
        Seed of the subsamples and of the control cells the predictions shift.

    Returns
    -------
    ``(adata_pred, adata_real)``: genes in ``truth.var_names`` order, ``obs[perturbation_key]``
    holding the predicted conditions and ``control_group``. ``truth`` is not modified.

    Raises
    ------
    ValueError
        When genes are missing or predicted as ``NaN``, a predicted condition has no real
        cells, ``pred`` holds the control, or ``truth`` has fewer than 2 control cells.
    """
    genes = pd.Index(truth.var_names)
    missing = genes.difference(pred.columns)
    if len(missing):
        raise ValueError(
            f"Predictions lack genes {list(missing[:5])} of the real cells; cell-eval needs "
            "the same genes in both: predict every gene or subset truth to the predicted ones."
        )
    values = pred.loc[:, genes].to_numpy(dtype=np.float64)
    bad = genes[~np.isfinite(values).all(0)]
    if len(bad):
        raise ValueError(
            f"Predictions are NaN or infinite for genes {list(bad[:5])} (e.g. outside the "
            "model's vocabulary); subset truth to the predicted genes first."
        )
    names = [str(c) for c in pred.index]
    if control_group in names:
        raise ValueError(
            f"Predictions hold the control {control_group!r}; it is taken from truth: drop it."
        )
    if len(set(names)) != len(names):
        raise ValueError("Predictions hold a condition twice.")
    labels = truth.obs[perturbation_key].astype(str).to_numpy()
    known = set(labels)
    absent = [c for c in names if c not in known]
    if absent:
        raise ValueError(
            f"No real cells for predicted conditions {absent[:5]}: cell-eval needs the same "
            "labels in both (check the spelling, e.g. 'A+B' against 'B+A')."
        )
    rng = np.random.default_rng(seed)

    def pick(rows: np.ndarray) -> np.ndarray:
        if max_cells is not None and len(rows) > max_cells:
            rows = np.sort(rng.choice(rows, int(max_cells), replace=False))
        return rows

    ctrl_rows = pick(np.flatnonzero(labels == control_group))
    if len(ctrl_rows) < 2:
        raise ValueError(f"truth needs at least 2 {control_group!r} cells for cell-eval.")
    ctrl = dense_rows(truth.X, ctrl_rows)
    ctrl_mean = ctrl.mean(0)
    real_rows = [ctrl_rows]
    blocks, pred_labels = [ctrl], [control_group] * len(ctrl_rows)
    for name, profile in zip(names, values):
        rows = pick(np.flatnonzero(labels == name))
        real_rows.append(rows)
        base = ctrl[rng.integers(0, len(ctrl), size=len(rows))]
        blocks.append(np.clip(base + (profile - ctrl_mean), 0.0, None))
        pred_labels += [name] * len(rows)
    var = pd.DataFrame(index=genes.astype(str))
    order = np.concatenate(real_rows)
    x_real = truth.X[order]
    real = AnnData(
        sp.csr_matrix(x_real, dtype=np.float32) if sp.issparse(x_real) else x_real,
        obs=pd.DataFrame(
            {perturbation_key: labels[order]}, index=np.asarray(truth.obs_names)[order]
        ),
        var=var,
    )
    adata_pred = AnnData(
        np.vstack(blocks).astype(np.float32),
        obs=pd.DataFrame(
            {perturbation_key: pred_labels}, index=[f"pred{i}" for i in range(len(pred_labels))]
        ),
        var=var.copy(),
    )
    return adata_pred, real


def cell_eval_metrics(
    predictions: Mapping[str, pd.DataFrame],
    truth: AnnData,
    *,
    perturbation_key: str = "condition",
    control_group: str = "ctrl",
    metrics: Sequence[str] = CELL_EVAL_METRICS,
    ceiling: bool = False,
    max_cells: int | None = 100,
    seed: int = 0,
    num_threads: int = 1,
) -> pd.DataFrame:
    """Score mean predictions with cell-eval's ``MetricsEvaluator`` (its ``full`` profile).

    Parameters
    ----------
    predictions
        ``{method: predicted means (conditions x genes)}``.
    truth
        Observed log-normalised cells, control included.
    perturbation_key, control_group
        Condition column and control condition.
    metrics
        cell-eval metric columns to keep (default: ``pearson_delta``, ``mae``, ``mse``,
        ``discrimination_score_l1``, ``overlap_at_N``).
    ceiling
        Also score cell-eval's data ceiling (``compute_ceiling``: each condition's real
        cells split into two disjoint halves, one scored as the prediction of the other),
        as method ``"ceiling"``; these per-condition values are at half depth (cell-eval's
        aggregated Spearman-Brown correction is in ``table.attrs["ceiling"]``).
    max_cells, seed
        As in :func:`cell_eval_pair`.
    num_threads
        Threads of cell-eval's differential expression.

    Returns
    -------
    DataFrame with columns ``method``, ``condition`` and ``metrics``, one row per method and
    condition. Nothing is written into ``truth`` (cell-eval writes into a temporary folder).

    Raises
    ------
    ImportError
        Without cell-eval (``pip install 'scvi-scgpt[perturbation]'``).
    ValueError
        When a prediction does not line up with ``truth`` (:func:`cell_eval_pair`), before
        cell-eval is called.
    """
    evaluator_cls = _import_cell_eval()
    pairs = {
        method: cell_eval_pair(
            pred,
            truth,
            perturbation_key=perturbation_key,
            control_group=control_group,
            max_cells=max_cells,
            seed=seed,
        )
        for method, pred in predictions.items()
    }
    frames = []
    quiet = logging.getLogger("cell_eval")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory() as outdir:
            for method, (adata_pred, real) in pairs.items():
                evaluator = evaluator_cls(
                    adata_pred,
                    real,
                    control_pert=control_group,
                    pert_col=perturbation_key,
                    num_threads=num_threads,
                    outdir=outdir,
                )
                results, _ = evaluator.compute(profile="full", write_csv=False)
                frames.append(_per_condition(results, method, metrics))
            attrs = {}
            if ceiling and pairs:
                real = next(iter(pairs.values()))[1]
                evaluator = evaluator_cls(
                    None,
                    real,
                    control_pert=control_group,
                    pert_col=perturbation_key,
                    num_threads=num_threads,
                    outdir=outdir,
                )
                results, agg = evaluator.compute_ceiling(write_csv=False, seed=seed)
                frames.append(_per_condition(results, "ceiling", metrics))
                agg = agg.to_pandas()
                attrs = {m: float(agg[m].iloc[0]) for m in metrics if m in agg}
    finally:
        quiet.setLevel(level)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    table.attrs["ceiling"] = attrs
    return table


def _per_condition(results, method: str, metrics: Sequence[str]) -> pd.DataFrame:
    frame = results.to_pandas()
    unknown = [m for m in metrics if m not in frame]
    if unknown:
        raise ValueError(f"cell-eval returned no {unknown}; it has {list(frame.columns)}.")
    out = frame[["perturbation", *metrics]].rename(columns={"perturbation": "condition"})
    out.insert(0, "method", method)
    return out
