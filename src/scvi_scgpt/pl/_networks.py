"""Gene-network plots: program scores per cell type, and one program's network."""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd


def program_scores_heatmap(
    adata: ad.AnnData,
    *,
    groupby: str,
    key_prefix: str = "program_score",
    columns: Sequence[str] | None = None,
    standardize: bool = True,
    title: str | None = None,
    ax=None,
):
    """Mean gene-program score per cell type (the paper's heatmap).

    Parameters
    ----------
    adata
        Cells with program scores in ``obs`` (from
        :func:`scvi_scgpt.tl.score_gene_programs`).
    groupby
        ``adata.obs`` column of the cell types.
    key_prefix
        Prefix of the score columns (``f"{key_prefix}_{program}"``); ignored when
        ``columns`` is given.
    columns
        Score columns to show.
    standardize
        Z-score each program's means across cell types (colour = relative enrichment).
    title
        Axes title.
    ax
        Matplotlib axes (default: a new figure).

    Returns
    -------
    The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    if groupby not in adata.obs:
        raise ValueError(f"{groupby!r} is not a column of adata.obs.")
    if columns is None:
        columns = [c for c in adata.obs.columns if str(c).startswith(f"{key_prefix}_")]
    missing = [c for c in columns if c not in adata.obs]
    if missing or not columns:
        raise ValueError(f"No program-score columns to plot (missing: {missing}).")
    means = adata.obs[list(columns)].groupby(adata.obs[groupby], observed=True).mean()
    values = means.to_numpy(dtype=np.float64)
    if standardize:
        sd = values.std(0)
        values = (values - values.mean(0)) / np.where(sd > 0, sd, 1.0)
    prefix = f"{key_prefix}_"
    labels = [str(c)[len(prefix) :] if str(c).startswith(prefix) else str(c) for c in columns]
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.5 + 0.35 * len(columns), 1.2 + 0.35 * len(means)))
    else:
        fig = ax.figure
    image = ax.imshow(values, aspect="auto", cmap="RdBu_r" if standardize else "viridis")
    ax.set_xticks(range(len(columns)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(means)), [str(i) for i in means.index], fontsize=8)
    ax.set_xlabel("gene program")
    ax.set_ylabel(groupby)
    fig.colorbar(image, ax=ax, label="z-score of mean" if standardize else "mean score")
    if title:
        ax.set_title(title)
    return fig


def program_network(
    network: ad.AnnData,
    program: str,
    *,
    min_weight: float | None = None,
    seed: int = 0,
    title: str | None = None,
    ax=None,
):
    """Draw the gene network of one program (spring layout, edge width = similarity).

    Parameters
    ----------
    network
        Gene network AnnData (``SCGPT.gene_network`` or
        :func:`scvi_scgpt.tl.gene_similarity_network`).
    program
        The program to draw (a value of ``network.obs["program"]``).
    min_weight
        Hide edges weaker than this.
    seed
        Layout seed.
    title
        Axes title (default: the program name).
    ax
        Matplotlib axes (default: a new figure).

    Returns
    -------
    The matplotlib figure.
    """
    import matplotlib.pyplot as plt
    import networkx as nx

    from scvi_scgpt.tl import network_to_networkx

    graph = network_to_networkx(network, min_weight=min_weight, program=str(program))
    if ax is None:
        side = 3.0 + 0.15 * graph.number_of_nodes()
        fig, ax = plt.subplots(figsize=(min(side, 10), min(side, 10)))
    else:
        fig = ax.figure
    pos = nx.spring_layout(graph, seed=seed, weight="weight")
    weights = pd.Series([d["weight"] for *_, d in graph.edges(data=True)], dtype=np.float64)
    span = float(weights.max() - weights.min()) if len(weights) else 0.0
    widths = 0.5 + 2.5 * (weights - (weights.min() if len(weights) else 0.0)) / max(span, 1e-9)
    nx.draw_networkx_edges(graph, pos, ax=ax, width=list(widths), alpha=0.5)
    nx.draw_networkx_nodes(graph, pos, ax=ax, node_size=250, node_color="#9ecae1")
    nx.draw_networkx_labels(graph, pos, ax=ax, font_size=7)
    ax.set_axis_off()
    ax.set_title(title if title is not None else f"program {program}")
    return fig
