"""Perturbation-prediction metrics of GEARS and the scGPT tutorial.

Pearson correlations over genes of predicted and observed mean expression, of their changes
from the control mean, each on all genes and on the top differentially expressed (DE) genes,
where DE genes are ranked by the absolute Welch t statistic of the condition's cells against
the control cells, as GEARS ranks them with ``scanpy.tl.rank_genes_groups(method="t-test",
rankby_abs=True)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from scvi_scgpt.tl._perturbation_data import (
    canonical_condition,
    condition_genes,
    condition_means,
    dense_rows,
)
from scvi_scgpt.tl._perturbation_scores import (
    INTERACTION_THRESHOLD,
    SCORES,
    condition_scores,
    top_expressed,
)

#: The plain mean squared error of the means is cell-eval's ``mse``
#: (:func:`cell_eval_metrics`); ours was removed.
METRICS = (
    "pearson",
    "pearson_de",
    "pearson_delta",
    "pearson_de_delta",
    "mse_de",
    "frac_correct_direction_de",
    *SCORES,
)


def welch_t(group: np.ndarray, control: np.ndarray) -> np.ndarray:
    """Welch t statistic per gene of ``group`` cells against ``control`` cells.

    As scanpy's t-test: a gene without variance in both groups gets 0 when its means are
    equal (undefined) and ``+-inf`` when they differ (the most separated genes rank first).

    Parameters
    ----------
    group, control
        ``(n_cells, n_genes)`` expression of the two groups (at least 2 cells each).

    Returns
    -------
    ``(n_genes,)`` statistics.
    """
    if len(group) < 2 or len(control) < 2:
        raise ValueError("A t-test needs at least 2 cells in the condition and in the control.")
    diff = group.mean(0) - control.mean(0)
    se = np.sqrt(group.var(0, ddof=1) / len(group) + control.var(0, ddof=1) / len(control))
    with np.errstate(divide="ignore", invalid="ignore"):
        score = diff / se
    return np.where(np.isnan(score), 0.0, score)


def rank_de_genes(
    adata: AnnData,
    *,
    perturbation_key: str = "condition",
    control_group: str = "ctrl",
    conditions: Sequence[str] | None = None,
    control: AnnData | None = None,
    n_top: int | None = 20,
) -> dict[str, list[str]]:
    """Genes of each condition ranked by ``|t|`` against the control cells (GEARS' ranking).

    Parameters
    ----------
    adata
        Cells with ``adata.obs[perturbation_key]``.
    perturbation_key, control_group
        Condition column and control condition.
    conditions
        Conditions to rank (default every non-control condition).
    control
        Control cells (default the ``control_group`` cells of ``adata``).
    n_top
        Genes kept per condition (``None``: all).

    Returns
    -------
    ``{condition: [gene, ...]}``, most significant first (ties keep the gene order).
    """
    labels = adata.obs[perturbation_key].astype(str).to_numpy()
    if control is None:
        ctrl = dense_rows(adata.X, np.flatnonzero(labels == control_group))
    else:
        ctrl = dense_rows(control.X)
    if conditions is None:
        conditions = sorted(set(labels) - {control_group})
    names = np.asarray(adata.var_names)
    ranked: dict[str, list[str]] = {}
    for cond in conditions:
        rows = np.flatnonzero(labels == cond)
        if len(rows) < 2:
            raise ValueError(f"Condition {cond!r} has {len(rows)} cell(s); a t-test needs 2.")
        score = welch_t(dense_rows(adata.X, rows), ctrl)
        order = np.argsort(-np.abs(score), kind="stable")
        ranked[cond] = names[order[:n_top] if n_top else order].tolist()
    return ranked


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; ``NaN`` when a vector is constant up to float32 rounding."""
    scale = 1.0 + max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0))
    a = a - a.mean()
    b = b - b.mean()
    if np.abs(a).max(initial=0.0) <= 1e-6 * scale or np.abs(b).max(initial=0.0) <= 1e-6 * scale:
        return float("nan")
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _as_profile_frame(values, columns: pd.Index, what: str) -> pd.DataFrame:
    frame = pd.DataFrame(values)
    missing = columns.difference(frame.columns)
    if len(missing):
        raise ValueError(f"{what} lacks genes {list(missing[:5])} of the observed data.")
    return frame.loc[:, columns].astype(np.float64)


def perturbation_metrics(
    pred: pd.DataFrame,
    truth: AnnData | pd.DataFrame,
    control: AnnData | np.ndarray | pd.Series | None = None,
    *,
    perturbation_key: str = "condition",
    control_group: str = "ctrl",
    de_genes: Mapping[str, Sequence[str]] | None = None,
    n_de: int = 20,
    centroid: np.ndarray | pd.Series | None = None,
    n_top_expressed: int = 1000,
    interaction_threshold: float = INTERACTION_THRESHOLD,
) -> pd.DataFrame:
    """GEARS / scGPT-tutorial metrics of predicted mean expression, per condition and averaged.

    Per condition: ``pearson`` (mean expression, all genes), ``pearson_de`` (top ``n_de`` DE
    genes), ``pearson_delta`` and ``pearson_de_delta`` (the same on the change from the control
    mean), ``mse_de`` (mean squared error of the means on the DE genes),
    ``frac_correct_direction_de`` (fraction of DE genes whose predicted change from the control
    has the observed sign), and the scores of ``tl._perturbation_scores``:
    ``l2_top_expressed`` (Ahlmann-Eltze et al.: L2 distance on the ``n_top_expressed`` genes
    with the highest control mean), ``pearson_delta_centroid`` (Systema: Pearson-delta
    against the perturbed centroid), ``wmse`` (DE-weighted MSE, weights ``|t|`` summing to
    1; with means only, ``|observed change|``), and for doubles whose singles were observed
    ``interaction_pearson`` / ``interaction_sign`` / ``n_interaction_genes`` (predicted vs
    observed ``AB - (A + B - ctrl)`` on the genes where the observed one exceeds
    ``interaction_threshold``). A correlation with a constant vector (e.g. the "no change"
    prediction's deltas) is ``NaN``. The plain MSE of the means is cell-eval's ``mse``
    (:func:`cell_eval_metrics`).

    Parameters
    ----------
    pred
        Predicted mean expression, conditions (GEARS spelling) x genes.
    truth
        Observed cells (AnnData with ``obs[perturbation_key]``; control cells may be included)
        or observed means (DataFrame, conditions x genes; then ``de_genes`` is required).
    control
        Control cells (AnnData) or the control mean profile; default: the ``control_group``
        cells of ``truth``.
    perturbation_key, control_group
        Condition column and control condition of ``truth``.
    de_genes
        ``{condition: genes}`` ranked DE genes to use (e.g. GEARS'
        ``uns["rank_genes_groups_cov_all"]`` mapped to conditions); default: ranked here.
    n_de
        Number of top DE genes (20 in GEARS and scGPT).
    centroid
        Perturbed centroid of ``pearson_delta_centroid`` (default: the mean of the observed
        mean profiles of every non-control condition of ``truth``).
    n_top_expressed
        Genes of ``l2_top_expressed`` (Ahlmann-Eltze et al.: 1,000).
    interaction_threshold
        Minimum ``|observed interaction|`` of a gene scored by the interaction metrics.

    Returns
    -------
    DataFrame indexed by the conditions of ``pred`` followed by a ``"mean"`` row (the mean
    over conditions, ignoring ``NaN``), with the columns above and ``n_cells``.

    Raises
    ------
    ValueError
        When a condition of ``pred`` has no observed cells, genes differ, or DE genes cannot be
        ranked (means only, or fewer than 2 cells).
    """
    if isinstance(truth, AnnData):
        genes = pd.Index(truth.var_names)
        labels = truth.obs[perturbation_key].astype(str)
        counts = labels.value_counts()
        missing = [c for c in pred.index if c not in counts.index]
        if missing:
            raise ValueError(f"No observed cells for conditions {missing[:5]}.")
        true_means = condition_means(
            truth, perturbation_key=perturbation_key, conditions=list(pred.index)
        )
        n_cells = counts.reindex(pred.index).to_numpy()
    else:
        genes = pd.Index(truth.columns)
        true_means = _as_profile_frame(truth, genes, "truth").reindex(pred.index)
        if true_means.isna().any(axis=None):
            raise ValueError("truth lacks some conditions of pred.")
        n_cells = np.full(len(pred), np.nan)
    pred = _as_profile_frame(pred, genes, "pred")
    if isinstance(control, AnnData):
        ctrl_mean = dense_rows(control[:, genes].X).mean(0)
    elif control is None:
        if not isinstance(truth, AnnData):
            raise ValueError("Pass the control cells or mean profile as `control`.")
        rows = np.flatnonzero(truth.obs[perturbation_key].astype(str) == control_group)
        if not len(rows):
            raise ValueError(f"truth has no {control_group!r} cells; pass `control`.")
        ctrl_mean = dense_rows(truth.X, rows).mean(0)
    else:
        ctrl_mean = np.asarray(
            control.reindex(genes) if isinstance(control, pd.Series) else control, dtype=float
        ).ravel()
        if len(ctrl_mean) != len(genes):
            raise ValueError(f"control has {len(ctrl_mean)} values for {len(genes)} genes.")
    if de_genes is None:
        if not isinstance(truth, AnnData):
            raise ValueError("Ranking DE genes needs cells: pass truth as an AnnData or de_genes.")
        control_cells = control if isinstance(control, AnnData) else None
        de_genes = rank_de_genes(
            truth,
            perturbation_key=perturbation_key,
            control_group=control_group,
            conditions=list(pred.index),
            control=control_cells,
            n_top=n_de,
        )
    position = {g: i for i, g in enumerate(genes)}
    extra = _score_inputs(
        truth, pred.index, genes, ctrl_mean, control, perturbation_key, control_group, centroid
    )
    top = top_expressed(ctrl_mean, n_top_expressed)
    rows = []
    for cond in pred.index:
        p = pred.loc[cond].to_numpy()
        t = true_means.loc[cond].to_numpy()
        if cond not in de_genes:
            raise ValueError(f"No DE genes for condition {cond!r}.")
        de = np.array([position[g] for g in list(de_genes[cond])[:n_de]], dtype=int)
        dp, dt = p - ctrl_mean, t - ctrl_mean
        rows.append(
            {
                "pearson": _pearson(p, t),
                "pearson_de": _pearson(p[de], t[de]),
                "pearson_delta": _pearson(dp, dt),
                "pearson_de_delta": _pearson(dp[de], dt[de]),
                "mse_de": float(np.mean((p[de] - t[de]) ** 2)),
                "frac_correct_direction_de": float(np.mean(np.sign(dp[de]) == np.sign(dt[de]))),
            }
            | condition_scores(
                p,
                t,
                ctrl_mean,
                extra["centroid"],
                extra["weights"](cond, t),
                top,
                extra["singles"].get(cond),
                interaction_threshold,
            )
        )
    table = pd.DataFrame(rows, index=pd.Index(pred.index, name="condition"), columns=METRICS)
    table["n_cells"] = n_cells
    table.loc["mean"] = table.mean(skipna=True)
    return table


def _score_inputs(
    truth, conditions, genes, ctrl_mean, control, perturbation_key, control_group, centroid
) -> dict:
    """Perturbed centroid, WMSE weights and observed singles of doubles, from ``truth``."""
    if isinstance(truth, AnnData):
        labels = truth.obs[perturbation_key].astype(str).to_numpy()
        observed = sorted(set(labels) - {control_group})
        means = condition_means(truth, perturbation_key=perturbation_key, conditions=observed)
        if isinstance(control, AnnData):
            ctrl_cells = dense_rows(control[:, genes].X)
        else:
            ctrl_cells = dense_rows(truth.X, np.flatnonzero(labels == control_group))

        def weights(cond, _t):
            return welch_t(dense_rows(truth.X, np.flatnonzero(labels == cond)), ctrl_cells)

    else:
        means = _as_profile_frame(truth, genes, "truth")
        means = means.loc[[c for c in means.index if c != control_group]]

        def weights(_cond, t):
            return t - ctrl_mean

    if centroid is None:
        ref = means.to_numpy().mean(0)
    else:
        ref = np.asarray(
            centroid.reindex(genes) if isinstance(centroid, pd.Series) else centroid, float
        ).ravel()
    singles = {}
    for cond in conditions:
        perturbed = condition_genes(str(cond), control=control_group)
        if len(perturbed) != 2:
            continue
        names = [canonical_condition([g], control=control_group) for g in perturbed]
        if all(n in means.index for n in names):
            singles[cond] = (means.loc[names[0]].to_numpy(), means.loc[names[1]].to_numpy())
    return {"centroid": ref, "weights": weights, "singles": singles}


def evaluate_perturbation_predictions(
    predictions: Mapping[str, pd.DataFrame],
    truth: AnnData,
    *,
    perturbation_key: str = "condition",
    control_group: str = "ctrl",
    subgroups: pd.Series | None = None,
    n_de: int = 20,
) -> pd.DataFrame:
    """Score several methods' predictions on the same observed cells.

    Parameters
    ----------
    predictions
        ``{method: predicted means (conditions x genes)}``, e.g. ``SCGPT.predict_perturbation``
        and :func:`perturbation_baselines` outputs on the same conditions.
    truth
        Observed cells, control cells included.
    perturbation_key, control_group
        Condition column and control condition.
    subgroups
        Optional subgroup per condition (:func:`split_subgroups`); the averages are then
        given per subgroup too.
    n_de
        Number of top DE genes.

    Returns
    -------
    DataFrame with columns ``method``, ``subgroup`` (``"all"`` and each subgroup),
    ``n_conditions`` and the averaged metrics.
    """
    conditions = sorted({c for p in predictions.values() for c in p.index})
    de = rank_de_genes(
        truth,
        perturbation_key=perturbation_key,
        control_group=control_group,
        conditions=conditions,
        n_top=n_de,
    )
    records = []
    for method, pred in predictions.items():
        table = perturbation_metrics(
            pred,
            truth,
            perturbation_key=perturbation_key,
            control_group=control_group,
            de_genes=de,
            n_de=n_de,
        ).drop(index="mean")
        groups = {"all": table.index}
        if subgroups is not None:
            for name in pd.unique(subgroups.reindex(table.index).dropna()):
                groups[name] = table.index[subgroups.reindex(table.index) == name]
        for name, index in groups.items():
            part = table.loc[index, list(METRICS)]
            records.append(
                {"method": method, "subgroup": name, "n_conditions": len(index)}
                | part.mean(skipna=True).to_dict()
            )
    return pd.DataFrame(records)
