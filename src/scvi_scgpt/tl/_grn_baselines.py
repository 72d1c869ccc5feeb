"""Gene-network baselines (co-expression, GENIE3-style random forests, random) and edge metrics.

Edge scores are gene x gene DataFrames: rows are sources (regulators), columns targets. Metrics
follow BEELINE: AUPRC, its ratio over a random predictor (the edge density), AUROC and early
precision (precision among the top ``n_true`` scored edges).
"""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp


def _expression(adata: ad.AnnData, layer: str | None) -> tuple[np.ndarray, pd.Index]:
    if not isinstance(adata, ad.AnnData):
        raise TypeError(f"adata must be an AnnData, not {type(adata).__name__}.")
    if layer is not None and layer not in adata.layers:
        raise ValueError(f"Layer {layer!r} not in adata.layers ({list(adata.layers)}).")
    x = adata.layers[layer] if layer is not None else adata.X
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    return x.astype(np.float64), adata.var_names.astype(str)


def coexpression_network(
    adata: ad.AnnData, *, method: str = "pearson", layer: str | None = None
) -> pd.DataFrame:
    """Absolute correlation between every pair of genes (an undirected baseline).

    Parameters
    ----------
    adata
        Cells x genes (log-normalised expression is the usual input). The genes x genes
        result is dense: use it on a few thousand genes at most.
    method
        ``"pearson"`` or ``"spearman"`` (ranks with ties averaged).
    layer
        Layer to use instead of ``X``.

    Returns
    -------
    Genes x genes DataFrame of ``|correlation|`` (0 for constant genes, 0 on the diagonal).
    """
    from scipy.stats import rankdata

    if method not in ("pearson", "spearman"):
        raise ValueError(f"method={method!r} must be 'pearson' or 'spearman'.")
    x, genes = _expression(adata, layer)
    if x.shape[0] < 3:
        raise ValueError(f"Correlations need at least 3 cells; got {x.shape[0]}.")
    if method == "spearman":
        x = rankdata(x, axis=0)
    x = x - x.mean(0)
    norms = np.linalg.norm(x, axis=0)
    constant = norms == 0
    norms[constant] = 1.0
    x = x / norms
    corr = np.abs(x.T @ x)
    corr[constant, :] = 0.0
    corr[:, constant] = 0.0
    np.fill_diagonal(corr, 0.0)
    return pd.DataFrame(corr.astype(np.float32), index=genes, columns=genes)


def genie3_network(
    adata: ad.AnnData,
    *,
    regulators: Sequence[str] | None = None,
    layer: str | None = None,
    n_estimators: int = 1000,
    max_features: str | float = "sqrt",
    seed: int = 0,
    n_jobs: int = 1,
) -> pd.DataFrame:
    """GENIE3-style network: one random forest per target gene (scikit-learn).

    Each target (scaled to unit variance) is regressed on the candidate regulators (every
    other gene by default) with ``RandomForestRegressor(n_estimators, max_features)``; the
    edge score regulator -> target is the regulator's impurity importance.

    Parameters
    ----------
    adata
        Cells x genes.
    regulators
        Candidate regulators (default: all genes).
    layer
        Layer to use instead of ``X``.
    n_estimators
        Trees per forest (GENIE3: 1000).
    max_features
        Features tried per split (GENIE3: ``"sqrt"``).
    seed
        Random state.
    n_jobs
        Parallel jobs of each forest.

    Returns
    -------
    Regulators x genes DataFrame of importances (0 on self-edges).
    """
    from sklearn.ensemble import RandomForestRegressor

    x, genes = _expression(adata, layer)
    if regulators is None:
        regs = genes
    else:
        regs = pd.Index([str(r) for r in regulators])
        unknown = regs[~regs.isin(genes)]
        if len(unknown):
            raise ValueError(f"Regulators not in adata.var_names: {list(unknown[:10])}.")
    reg_pos = genes.get_indexer(regs)
    std = x.std(0)
    scores = np.zeros((len(regs), len(genes)), dtype=np.float32)
    for j in range(len(genes)):
        if std[j] == 0:
            continue
        inputs = reg_pos[reg_pos != j]
        if not len(inputs):
            continue
        forest = RandomForestRegressor(
            n_estimators=int(n_estimators),
            max_features=max_features,
            random_state=int(seed) + j,
            n_jobs=n_jobs,
        )
        forest.fit(x[:, inputs], x[:, j] / std[j])
        rows = np.flatnonzero(reg_pos != j)
        scores[rows, j] = forest.feature_importances_
    return pd.DataFrame(scores, index=regs, columns=genes)


def random_network(genes: Sequence[str], *, seed: int = 0) -> pd.DataFrame:
    """Uniform random edge scores (the chance baseline).

    Parameters
    ----------
    genes
        The genes.
    seed
        Random state.

    Returns
    -------
    Genes x genes DataFrame of uniform scores (0 on the diagonal).
    """
    genes = pd.Index([str(g) for g in genes])
    scores = np.random.default_rng(seed).random((len(genes), len(genes))).astype(np.float32)
    np.fill_diagonal(scores, 0.0)
    return pd.DataFrame(scores, index=genes, columns=genes)


def _edge_series(scores: pd.DataFrame, directed: bool) -> pd.Series:
    rows = scores.index.astype(str)
    cols = scores.columns.astype(str)
    values = scores.to_numpy(dtype=np.float64)
    r, c = np.meshgrid(np.arange(len(rows)), np.arange(len(cols)), indexing="ij")
    src, tgt, val = rows[r.ravel()], cols[c.ravel()], values.ravel()
    keep = src != tgt
    src, tgt, val = src[keep], tgt[keep], val[keep]
    if not directed:
        lo = np.where(src < tgt, src, tgt)
        hi = np.where(src < tgt, tgt, src)
        src, tgt = lo, hi
    series = pd.Series(val, index=pd.MultiIndex.from_arrays([src, tgt]))
    return series.groupby(level=[0, 1]).max()


def evaluate_edges(
    scores: pd.DataFrame,
    true_edges: pd.DataFrame,
    *,
    directed: bool = False,
) -> dict[str, float]:
    """AUPRC / AUROC of scored gene pairs against known edges (BEELINE conventions).

    Parameters
    ----------
    scores
        Sources x targets DataFrame of edge scores (higher = more likely); self-pairs are
        ignored. Non-finite scores count as the lowest.
    true_edges
        DataFrame with ``source`` and ``target`` columns (extra columns ignored).
    directed
        Compare ordered pairs; otherwise pairs are unordered and a pair scores the larger of
        its two directions.

    Returns
    -------
    ``auprc``, ``auroc``, ``auprc_ratio`` (AUPRC / edge density), ``early_precision``
    (precision among the top ``n_true`` pairs), ``density``, ``n_true`` (true edges among
    the scored pairs), ``n_pairs`` and ``n_true_unscored`` (true edges whose genes are not
    both in ``scores``).
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    if not isinstance(scores, pd.DataFrame):
        raise TypeError("scores must be a DataFrame (sources x targets).")
    if not {"source", "target"} <= set(true_edges.columns):
        raise ValueError("true_edges needs 'source' and 'target' columns.")
    series = _edge_series(scores, directed)
    src = true_edges["source"].astype(str).to_numpy()
    tgt = true_edges["target"].astype(str).to_numpy()
    keep = src != tgt
    src, tgt = src[keep], tgt[keep]
    if not directed:
        src, tgt = np.where(src < tgt, src, tgt), np.where(src < tgt, tgt, src)
    truth = pd.MultiIndex.from_arrays([src, tgt]).unique()
    label = series.index.isin(truth)
    n_true = int(label.sum())
    if n_true == 0 or n_true == len(label):
        raise ValueError(
            f"Need both true and false edges among the {len(label)} scored pairs; "
            f"{n_true} are true."
        )
    values = series.to_numpy(dtype=np.float64)
    values = np.where(np.isfinite(values), values, -np.inf)
    finite_min = values[np.isfinite(values)].min() if np.isfinite(values).any() else 0.0
    values = np.where(np.isfinite(values), values, finite_min - 1.0)
    density = n_true / len(label)
    auprc = float(average_precision_score(label, values))
    top = np.argsort(-values, kind="stable")[:n_true]
    return {
        "auprc": auprc,
        "auroc": float(roc_auc_score(label, values)),
        "auprc_ratio": auprc / density,
        "early_precision": float(label[top].mean()),
        "density": float(density),
        "n_true": n_true,
        "n_pairs": int(len(label)),
        "n_true_unscored": int(len(truth) - n_true),
    }
