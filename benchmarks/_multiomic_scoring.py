"""Scoring and plots of the multi-omic benchmark: scib-metrics on embeddings and on graphs.

Embeddings go through ``scib_metrics.benchmark.Benchmarker`` (default metrics plus Leiden
NMI / ARI, raw scores). A method that gives only a neighbour graph (WNN) is scored with the
same metric functions, called as the Benchmarker calls them, on its own graph; the metrics
that need an embedding are ``NaN`` for it. Every method also gets graph-only aggregates, the
one comparison in which WNN takes part.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Metrics computed from the neighbour graph alone (scib-metrics names after cleaning), with
#: the scib-metrics function and how many neighbours the Benchmarker gives it.
GRAPH_METRICS = {
    "nmi_ari_cluster_labels_leiden": (("Leiden NMI", "Leiden ARI"), 15, "Bio conservation"),
    "clisi_knn": (("cLISI",), 90, "Bio conservation"),
    "ilisi_knn": (("iLISI",), 90, "Batch correction"),
    "kbet_per_label": (("KBET",), 50, "Batch correction"),
    "graph_connectivity": (("Graph connectivity",), 15, "Batch correction"),
}
AGGREGATES = ("Total", "Batch correction", "Bio conservation")
GRAPH_AGGREGATES = ("Total (graph)", "Batch (graph)", "Bio (graph)")


def _graph_metric_names(kind: str) -> list[str]:
    return [n for names, _, k in GRAPH_METRICS.values() if k == kind for n in names]


def score_graph(indices: np.ndarray, distances: np.ndarray, batch, labels) -> dict[str, float]:
    """The graph-based scib metrics of a kNN graph (rows: the cell itself, then neighbours)."""
    import anndata
    import scib_metrics
    from scib_metrics.benchmark._core import MetricAnnDataAPI
    from scib_metrics.nearest_neighbors import NeighborsResults

    ad = anndata.AnnData(np.zeros((len(indices), 0), dtype=np.float32))
    ad.obs["batch"] = np.asarray(batch)
    ad.obs["labels"] = np.asarray(labels)
    res = NeighborsResults(indices=indices, distances=distances)
    for n in (15, 50, 90):
        ad.uns[f"{n}_neighbor_res"] = res.subset_neighbors(n=n)
    out = {}
    for fn_name, (names, _, _) in GRAPH_METRICS.items():
        value = getattr(MetricAnnDataAPI, fn_name)(ad, getattr(scib_metrics, fn_name))
        if isinstance(value, dict):
            out[names[0]], out[names[1]] = float(value["nmi"]), float(value["ari"])
        else:
            out[names[0]] = float(value)
    return out


def score(
    obs: pd.DataFrame,
    embeddings: dict[str, np.ndarray],
    pre_integrated: np.ndarray,
    graphs: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[pd.DataFrame, dict[str, str]]:
    """scib-metrics scores (raw) of each method; ``obs`` has ``batch`` and ``cell_type``.

    Returns the table (methods x metrics, aggregates first, ``NaN`` where a metric does not
    apply) and each metric's type.
    """
    import anndata
    from scib_metrics.benchmark import Benchmarker, BioConservation

    keys = {name: f"X_m{i}" for i, name in enumerate(embeddings)}
    ad = anndata.AnnData(np.zeros((len(obs), 0), dtype=np.float32), obs=obs.copy())
    for name, key in keys.items():
        ad.obsm[key] = np.asarray(embeddings[name], dtype=np.float32)
    ad.obsm["X_pre"] = np.asarray(pre_integrated, dtype=np.float32)
    bm = Benchmarker(
        ad,
        batch_key="batch",
        label_key="cell_type",
        embedding_obsm_keys=list(keys.values()),
        bio_conservation_metrics=BioConservation(nmi_ari_cluster_labels_leiden=True),
        pre_integrated_embedding_obsm_key="X_pre",
        n_jobs=1,
        progress_bar=False,
    )
    bm.benchmark()
    df = bm.get_results(min_max_scale=False)
    kinds = {k: str(v) for k, v in df.loc["Metric Type"].items()}
    table = df.drop(index="Metric Type").astype(float)
    table.index = [{v: k for k, v in keys.items()}[i] for i in table.index]
    for name, (indices, distances) in (graphs or {}).items():
        values = score_graph(indices, distances, obs["batch"], obs["cell_type"])
        table.loc[name] = pd.Series(values)
    for kind, column in (
        ("Bio conservation", "Bio (graph)"),
        ("Batch correction", "Batch (graph)"),
    ):
        table[column] = table[_graph_metric_names(kind)].mean(axis=1)
        kinds[column] = "Aggregate score"
    table["Total (graph)"] = 0.4 * table["Batch (graph)"] + 0.6 * table["Bio (graph)"]
    kinds["Total (graph)"] = "Aggregate score"
    metrics = [c for c in table.columns if c not in (*AGGREGATES, *GRAPH_AGGREGATES)]
    bio = [c for c in metrics if kinds.get(c) == "Bio conservation"]
    batch = [c for c in metrics if kinds.get(c) == "Batch correction"]
    return table[[*AGGREGATES, *GRAPH_AGGREGATES, *bio, *batch]], kinds


# ----------------------------------------------------------------------------- plots
def umap_of(rep: np.ndarray, seed: int, n_neighbors: int = 15) -> np.ndarray:
    """2-D UMAP of a representation (scanpy neighbours + UMAP, on a private AnnData)."""
    import anndata
    import scanpy as sc

    a = anndata.AnnData(np.zeros((rep.shape[0], 0), dtype=np.float32))
    a.obsm["rep"] = np.asarray(rep, dtype=np.float32)
    sc.pp.neighbors(a, use_rep="rep", n_neighbors=n_neighbors, random_state=seed)
    sc.tl.umap(a, random_state=seed)
    return a.obsm["X_umap"]


def umap_panels(coords: dict[str, np.ndarray], obs: pd.DataFrame, color: list[str], title: str):
    """One scatter per method (columns) and ``obs`` column (rows); returns the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(color), len(coords), figsize=(3.6 * len(coords), 3.4 * len(color)), squeeze=False
    )
    cmap = plt.get_cmap("tab10")
    for i, key in enumerate(color):
        values = obs[key].astype(str).to_numpy()
        cats = sorted(set(values))
        for j, (name, xy) in enumerate(coords.items()):
            ax = axes[i, j]
            for k, cat in enumerate(cats):
                sel = values == cat
                ax.scatter(xy[sel, 0], xy[sel, 1], s=5, color=cmap(k % 10), label=cat, lw=0)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name}\n{key}", fontsize=9)
        axes[i, -1].legend(
            loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, markerscale=2, frameon=False
        )
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- tables
def mean_sd(tables: list[pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean and sd (ddof 0) over seeds of same-shaped score tables."""
    stack = np.stack([t.to_numpy(dtype=float) for t in tables])
    cols, rows = tables[0].columns, tables[0].index
    return (
        pd.DataFrame(stack.mean(0), index=rows, columns=cols),
        pd.DataFrame(stack.std(0), index=rows, columns=cols),
    )


def markdown(mean: pd.DataFrame, sd: pd.DataFrame, kinds: dict[str, str], n_seeds: int) -> str:
    """A markdown table: aggregates as mean ± sd (with several seeds), metrics as means."""
    import _harness as h

    def cell(r, c):
        m = mean.loc[r, c]
        if m != m:
            return "n/a"
        if n_seeds > 1 and c in (*AGGREGATES, *GRAPH_AGGREGATES):
            return f"{m:.3f} ± {sd.loc[r, c]:.3f}"
        return f"{m:.3f}"

    def head(c):
        kind = {"Bio conservation": "bio", "Batch correction": "batch"}.get(kinds.get(c))
        return c if kind is None else f"{c} ({kind})"

    rows = [[r, *[cell(r, c) for c in mean.columns]] for r in mean.index]
    return h.markdown_table(["method", *[head(c) for c in mean.columns]], rows)
