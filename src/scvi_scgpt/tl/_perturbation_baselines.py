"""Simple perturbation-prediction baselines that deep models must beat.

- ``no_change``: the control mean;
- ``train_mean``: the mean of the training conditions' mean profiles;
- ``additive``: control mean plus the sum of the single-gene changes seen in training;
- ``scaled_additive``: the additive change times one factor ``alpha`` fitted by least squares
  on the training doubles (``alpha < 1``: buffering on average, ``> 1``: synergy);
- ``matching_mean``: Systema's (Vinas Torne et al., Nat Biotech 2025) matching mean, the mean
  of the training singles' profiles of a double's genes (a gene without a training single
  uses the perturbed centroid, the mean of the training perturbations' profiles), and the
  perturbed centroid for a single;
- ``linear``: the linear model of Ahlmann-Eltze, Huber & Anders (Nat Methods 2025),
  ``Y ~ G W P^T + b``, with gene embeddings ``G`` from a PCA of the training mean profiles,
  perturbation embeddings ``P`` the rows of ``G`` of the perturbed genes (summed for a double)
  and ``W`` by two-sided ridge least squares.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from scvi_scgpt.tl._perturbation_data import (
    canonical_condition,
    check_perturbation_obs,
    condition_genes,
    condition_means,
)

BASELINES = (
    "no_change",
    "train_mean",
    "additive",
    "scaled_additive",
    "matching_mean",
    "linear",
)


def linear_model_fit(
    train_means: np.ndarray,
    train_perturbed: Sequence[Sequence[int]],
    *,
    n_components: int = 10,
    ridge: float = 0.1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit the linear perturbation model on training mean profiles.

    Parameters
    ----------
    train_means
        ``(n_conditions, n_genes)`` mean profiles of the training perturbations.
    train_perturbed
        Gene columns perturbed in each training condition.
    n_components
        Dimension of the gene embedding (capped by the data's rank).
    ridge
        Ridge penalty of both sides.

    Returns
    -------
    ``(G, W, b)``: gene embedding ``(n_genes, k)``, weights ``(k, k)`` and per-gene offset
    ``(n_genes,)``; a condition perturbing genes ``S`` is predicted as
    ``b + G @ W @ G[S].sum(0)``.
    """
    y = np.asarray(train_means, dtype=np.float64).T  # genes x conditions
    b = y.mean(1)
    centred = y - b[:, None]
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    k = int(min(n_components, int((s > 1e-10 * max(s.max(initial=0.0), 1.0)).sum()) or 1))
    g = u[:, :k] * s[:k]
    p = np.stack([g[list(idx)].sum(0) for idx in train_perturbed], axis=1)  # k x conditions
    eye = np.eye(k)
    left = np.linalg.solve(g.T @ g + ridge * eye, g.T @ centred @ p.T)
    w = np.linalg.solve((p @ p.T + ridge * eye).T, left.T).T
    return g, w, b


def additive_scale(
    means: pd.DataFrame,
    parsed: dict[str, tuple[str, ...]],
    train: Sequence[str],
    single_delta: dict[str, np.ndarray],
    ctrl_mean: np.ndarray,
) -> float:
    """Least-squares ``alpha`` of ``delta_AB = alpha (delta_A + delta_B)`` on training doubles.

    Only doubles whose genes both have a training single count; ``1.0`` when there is none
    (or their summed changes are all zero).
    """
    num = den = 0.0
    for c in train:
        perturbed = parsed[c]
        if len(perturbed) < 2 or any(g not in single_delta for g in perturbed):
            continue
        summed = sum(single_delta[g] for g in perturbed)
        num += float(summed @ (means.loc[c].to_numpy() - ctrl_mean))
        den += float(summed @ summed)
    return num / den if den > 0 else 1.0


def perturbation_baselines(
    adata: AnnData,
    conditions: Sequence[str | Sequence[str]],
    *,
    train_conditions: Sequence[str],
    perturbation_key: str = "condition",
    control_group: str = "ctrl",
    methods: Sequence[str] = BASELINES,
    n_components: int = 10,
    ridge: float = 0.1,
) -> dict[str, pd.DataFrame]:
    """Predict conditions' mean expression with the simple baselines.

    Parameters
    ----------
    adata
        Cells with GEARS conditions (log-normalised expression in ``X``), control included.
    conditions
        Conditions to predict (``"A+B"`` strings or gene lists); their genes must be measured.
    train_conditions
        Conditions the baselines may learn from (e.g. ``perturbation_split(...)["train"]``);
        the control is always used.
    perturbation_key, control_group
        Condition column and control condition.
    methods
        Any of ``"no_change"``, ``"train_mean"``, ``"additive"``, ``"scaled_additive"``,
        ``"matching_mean"``, ``"linear"`` (default: all).
    n_components, ridge
        Embedding dimension and ridge penalty of ``"linear"`` (Ahlmann-Eltze et al.: 10, 0.1).

    Returns
    -------
    ``{method: DataFrame}``, each conditions (GEARS spelling, in the order given) x
    ``adata.var_names``. ``"additive"`` adds the single-gene changes of the training singles;
    a gene without a training single contributes no change. ``"scaled_additive"`` multiplies
    that change by ``alpha``, the least-squares fit of the observed changes of the training
    doubles whose two genes have training singles (``alpha = 1`` without such doubles);
    ``alpha`` is in ``frame.attrs["alpha"]``. Nothing is written into ``adata``.

    Raises
    ------
    ValueError
        For an unknown method, a malformed condition, an unmeasured gene or no training
        perturbation.
    """
    unknown = [m for m in methods if m not in BASELINES]
    if unknown:
        raise ValueError(f"Unknown baselines {unknown}; choose from {list(BASELINES)}.")
    parsed = check_perturbation_obs(
        adata, perturbation_key=perturbation_key, control_group=control_group, min_cells=1
    )
    genes = list(map(str, adata.var_names))
    column = {g: i for i, g in enumerate(genes)}
    wanted = [condition_genes(c, control=control_group) for c in conditions]
    for perturbed in wanted:
        missing = [g for g in perturbed if g not in column]
        if missing:
            raise ValueError(f"Perturbation of {missing}: not a measured gene of this AnnData.")
    names = [canonical_condition(c, control=control_group) for c in wanted]
    train = [c for c in dict.fromkeys(map(str, train_conditions)) if c != control_group]
    absent = [c for c in train if c not in parsed]
    if absent:
        raise ValueError(f"Training conditions without cells: {absent[:5]}.")
    if not train:
        raise ValueError("No training perturbation among train_conditions.")
    means = condition_means(adata, perturbation_key=perturbation_key, conditions=train)
    ctrl = condition_means(adata, perturbation_key=perturbation_key, conditions=[control_group])
    ctrl_mean = ctrl.to_numpy()[0]
    out: dict[str, pd.DataFrame] = {}

    def frame(values: np.ndarray) -> pd.DataFrame:
        index = pd.Index(names, name="condition")
        return pd.DataFrame(values, index=index, columns=adata.var_names)

    if "no_change" in methods:
        out["no_change"] = frame(np.tile(ctrl_mean, (len(names), 1)))
    if "train_mean" in methods:
        out["train_mean"] = frame(np.tile(means.to_numpy().mean(0), (len(names), 1)))
    single_delta = {
        parsed[c][0]: means.loc[c].to_numpy() - ctrl_mean for c in train if len(parsed[c]) == 1
    }
    zero = np.zeros_like(ctrl_mean)
    empty = np.empty((0, len(genes)))
    summed = [sum((single_delta.get(g, zero) for g in p), zero) for p in wanted]
    if "additive" in methods:
        out["additive"] = frame(np.stack([ctrl_mean + d for d in summed]) if summed else empty)
    if "scaled_additive" in methods:
        alpha = additive_scale(means, parsed, train, single_delta, ctrl_mean)
        rows = [ctrl_mean + alpha * d for d in summed]
        out["scaled_additive"] = frame(np.stack(rows) if rows else empty)
        out["scaled_additive"].attrs["alpha"] = alpha
    if "matching_mean" in methods:
        centroid = means.to_numpy().mean(0)
        single_mean = {g: ctrl_mean + d for g, d in single_delta.items()}
        rows = [
            np.mean([single_mean.get(g, centroid) for g in p], axis=0) if len(p) > 1 else centroid
            for p in wanted
        ]
        out["matching_mean"] = frame(np.stack(rows) if rows else empty)
    if "linear" in methods:
        g, w, b = linear_model_fit(
            means.to_numpy(),
            [[column[x] for x in parsed[c]] for c in train],
            n_components=n_components,
            ridge=ridge,
        )
        rows = [b + g @ w @ g[[column[x] for x in perturbed]].sum(0) for perturbed in wanted]
        out["linear"] = frame(np.stack(rows) if rows else np.empty((0, len(genes))))
    return {m: out[m] for m in methods}
