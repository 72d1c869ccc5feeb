"""Perturbation scores that reward more than a collapsed (mean-like) prediction.

- ``l2_top_expressed``: Ahlmann-Eltze, Huber & Anders (Nat Methods 2025): the Euclidean
  distance between predicted and observed mean expression on the most expressed genes
  (1,000, ranked by the control mean);
- ``pearson_delta_centroid``: Systema (Vinas Torne et al., Nat Biotech 2025): the Pearson
  correlation of the changes from the perturbed centroid (the mean of the perturbations'
  mean profiles) instead of from the control, so a prediction of the average perturbation
  response scores about 0;
- ``wmse``: the DE-weighted mean squared error of "Diversity by design" (2025): each gene's
  squared error weighted by its absolute Welch t statistic, condition against control,
  the weights summing to 1 (an infinite ``|t|``, constant groups with different means,
  weighs as the largest finite one);
- ``interaction_pearson`` / ``interaction_sign``: on doubles whose two singles were observed,
  the correlation and the sign agreement of the predicted and the observed interaction
  ``AB - (A + B - ctrl)`` (observed single means in both), over the genes whose observed
  interaction exceeds ``interaction_threshold`` in absolute value.
"""

from __future__ import annotations

import numpy as np

SCORES = (
    "l2_top_expressed",
    "pearson_delta_centroid",
    "wmse",
    "interaction_pearson",
    "interaction_sign",
    "n_interaction_genes",
)

#: Default threshold (log-normalised units) on the observed interaction of a gene.
INTERACTION_THRESHOLD = 0.1


def top_expressed(control_mean: np.ndarray, n_top: int) -> np.ndarray:
    """Columns of the ``n_top`` genes with the highest control mean (ties: gene order)."""
    return np.argsort(-np.asarray(control_mean, dtype=float), kind="stable")[: int(n_top)]


def abs_t_weights(t_stat: np.ndarray) -> np.ndarray:
    """``|t|`` per gene (rows: conditions) with infinite and undefined values resolved.

    An infinite ``|t|`` (no variance in either group, different means) marks the most
    separated genes: it gets the largest finite ``|t|`` of its row, or 1 when no finite
    ``|t|`` is above 0 (each such gene then counts alike). Undefined ``t`` (``NaN``: no change
    and no variance) gets 0.

    Parameters
    ----------
    t_stat
        ``(n_genes,)`` or ``(n_conditions, n_genes)`` Welch t statistics.

    Returns
    -------
    Finite, non-negative weights of the same shape (not normalised).
    """
    t = np.abs(np.asarray(t_stat, dtype=float))
    rows = np.atleast_2d(t)
    finite = np.where(np.isfinite(rows), rows, 0.0)
    top = finite.max(1, keepdims=True, initial=0.0)
    resolved = np.where(np.isinf(rows), np.where(top > 0, top, 1.0), finite)
    return resolved.reshape(t.shape)


def de_weights(t_stat: np.ndarray) -> np.ndarray:
    """WMSE weights: ``|t|`` normalised to sum 1 (uniform when every ``t`` is 0).

    An infinite ``|t|`` weighs as the largest finite one (:func:`abs_t_weights`).
    """
    w = abs_t_weights(t_stat)
    total = w.sum()
    return w / total if total > 0 else np.full(len(w), 1.0 / max(len(w), 1))


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 1e-12 else float("nan")


def interaction_recovery(
    pred: np.ndarray,
    truth: np.ndarray,
    single_a: np.ndarray,
    single_b: np.ndarray,
    control_mean: np.ndarray,
    threshold: float = INTERACTION_THRESHOLD,
) -> tuple[float, float, int]:
    """Correlation and sign agreement of predicted and observed interactions of a double.

    Parameters
    ----------
    pred, truth
        Predicted and observed mean profiles of the double ``A+B``.
    single_a, single_b
        Observed mean profiles of ``A`` and ``B`` alone.
    control_mean
        Observed control mean.
    threshold
        Genes whose observed interaction ``|AB - (A + B - ctrl)|`` exceeds it are scored.

    Returns
    -------
    ``(pearson, sign agreement, number of genes)``; ``NaN`` scores with fewer than 3 genes
    (a prediction without interaction, e.g. the additive baseline, has ``NaN`` correlation
    and sign agreement 0).
    """
    additive = single_a + single_b - control_mean
    true_int = truth - additive
    pred_int = pred - additive
    scale = 1.0 + np.abs(additive).max(initial=0.0)
    pred_int = np.where(np.abs(pred_int) <= 1e-5 * scale, 0.0, pred_int)  # float32 rounding
    genes = np.abs(true_int) > float(threshold)
    n = int(genes.sum())
    if n < 3:
        return float("nan"), float("nan"), n
    sign = float(np.mean(np.sign(pred_int[genes]) == np.sign(true_int[genes])))
    return _corr(pred_int[genes], true_int[genes]), sign, n


def condition_scores(
    pred: np.ndarray,
    truth: np.ndarray,
    control_mean: np.ndarray,
    centroid: np.ndarray,
    t_stat: np.ndarray,
    top: np.ndarray,
    singles: tuple[np.ndarray, np.ndarray] | None,
    threshold: float = INTERACTION_THRESHOLD,
) -> dict[str, float]:
    """The :data:`SCORES` of one condition (interaction scores ``NaN`` without ``singles``)."""
    w = de_weights(t_stat)
    out = {
        "l2_top_expressed": float(np.sqrt(((pred[top] - truth[top]) ** 2).sum())),
        "pearson_delta_centroid": _corr(pred - centroid, truth - centroid),
        "wmse": float((w * (pred - truth) ** 2).sum()),
        "interaction_pearson": float("nan"),
        "interaction_sign": float("nan"),
        "n_interaction_genes": float("nan"),
    }
    if singles is not None:
        r, sign, n = interaction_recovery(
            pred, truth, singles[0], singles[1], control_mean, threshold
        )
        out |= {"interaction_pearson": r, "interaction_sign": sign, "n_interaction_genes": n}
    return out
