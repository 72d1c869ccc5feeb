"""Predicted against observed change of the top DE genes of a perturbation."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from anndata import AnnData

from scvi_scgpt.tl._perturbation_data import dense_rows
from scvi_scgpt.tl._perturbation_metrics import rank_de_genes


def perturbation_response(
    predictions: pd.DataFrame | Mapping[str, pd.DataFrame],
    truth: AnnData,
    condition: str,
    *,
    perturbation_key: str = "condition",
    control_group: str = "ctrl",
    n_de: int = 20,
    title: str | None = None,
    ax=None,
):
    """Predicted against observed change of a perturbation's top DE genes.

    Boxes: the observed cells' change from the control mean, one per DE gene; markers: each
    method's predicted mean change (the scGPT paper's perturbation figure).

    Parameters
    ----------
    predictions
        Predicted means (conditions x genes), or ``{method: predicted means}``.
    truth
        Observed cells, control cells included.
    condition
        The condition to draw (GEARS spelling).
    perturbation_key, control_group
        Condition column and control condition of ``truth``.
    n_de
        Number of top DE genes (ranked as GEARS does).
    title
        Axes title (default: the condition).
    ax
        Matplotlib axes to draw on (default: a new figure).

    Returns
    -------
    The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    if isinstance(predictions, pd.DataFrame):
        predictions = {"predicted": predictions}
    for method, frame in predictions.items():
        if condition not in frame.index:
            raise ValueError(f"{method} has no prediction for {condition!r}.")
    genes = rank_de_genes(
        truth,
        perturbation_key=perturbation_key,
        control_group=control_group,
        conditions=[condition],
        n_top=n_de,
    )[condition]
    labels = truth.obs[perturbation_key].astype(str).to_numpy()
    sub = truth[:, genes]
    ctrl = dense_rows(sub.X, np.flatnonzero(labels == control_group)).mean(0)
    cells = dense_rows(sub.X, np.flatnonzero(labels == condition)) - ctrl
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.0 + 0.45 * len(genes), 3.6))
    else:
        fig = ax.figure
    x = np.arange(len(genes))
    ax.boxplot(list(cells.T), positions=x, widths=0.6, showfliers=False)
    ax.axhline(0.0, color="0.6", lw=0.8, ls="--")
    markers = "os^Dv<>"
    for i, (method, frame) in enumerate(predictions.items()):
        change = frame.loc[condition, genes].to_numpy(dtype=float) - ctrl
        ax.scatter(x, change, marker=markers[i % len(markers)], s=22, zorder=3, label=method)
    ax.set_xticks(x)
    ax.set_xticklabels(genes, rotation=90)
    ax.set_ylabel("change from control mean")
    ax.set_title(title or condition)
    ax.legend(frameon=False, fontsize="small")
    fig.tight_layout()
    return fig
