"""Trivial predictors a trained model must beat on its validation cells, and the warning text.

- Cell-type classification: always predicting the training majority class; its accuracy on
  the validation cells is the *majority-class rate*.
- Expression regression (GEP/GEPC, generative): predicting each gene's mean training value
  (bin) at every masked position, the *per-gene-mean predictor*; its masked MSE on the
  validation minibatches is computed as the model's validation loss term is (mean over
  minibatches of the per-minibatch masked MSE, weighted by the minibatch's cells).

A randomly initialised scGPT trained too briefly, or with too low a learning rate, sits on
exactly these predictors: the classifier returns the majority class for every cell, and the
expression decoders return each gene's mean bin (the "plateau" in ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from scvi_scgpt._constants import MASK_VALUE, TOKEN_KEYS


class NoBetterThanTrivialWarning(UserWarning):
    """A trained model is no better than a trivial predictor on its validation cells."""


#: A classifier must beat the majority-class rate by this much accuracy.
ACCURACY_MARGIN = 0.02
#: A regression loss must be this fraction below the per-gene-mean predictor's.
MSE_RELATIVE_MARGIN = 0.02


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


# ----------------------------------------------------------------------------- classification
def majority_class(labels: Sequence | np.ndarray) -> tuple[Any, float]:
    """The most frequent label and its frequency.

    Parameters
    ----------
    labels
        Labels of the cells (any hashable values).

    Returns
    -------
    ``(label, frequency)``; ties go to the label that sorts first.
    """
    arr = np.asarray(labels).reshape(-1)
    if arr.size == 0:
        raise ValueError("No labels given.")
    values, counts = np.unique(arr, return_counts=True)
    i = int(np.argmax(counts))
    return values[i], float(counts[i] / arr.size)


def majority_class_rate(
    labels: Sequence | np.ndarray, reference: Sequence | np.ndarray | None = None
) -> float:
    """Accuracy on ``labels`` of always predicting the majority class of ``reference``.

    Parameters
    ----------
    labels
        Labels to score (the validation cells).
    reference
        Labels the predictor is fitted on (the training cells); default ``labels`` itself.

    Returns
    -------
    Fraction of ``labels`` equal to ``reference``'s most frequent label.
    """
    arr = np.asarray(labels).reshape(-1)
    if arr.size == 0:
        raise ValueError("No labels to score.")
    label, _ = majority_class(arr if reference is None else reference)
    return float(np.mean(arr == label))


# ----------------------------------------------------------------------------- regression
def _expression_positions(batch: Mapping, *, masked_only: bool):
    """Gene ids, targets and the positions of a minibatch's expression targets.

    Generated tokens when the batch has them (generative pretraining); otherwise every real
    token or, with ``masked_only``, the masked ones the model's expression loss scores.
    """
    if TOKEN_KEYS.GEN_GENE_IDS in batch:
        genes = _numpy(batch[TOKEN_KEYS.GEN_GENE_IDS])
        targets = _numpy(batch[TOKEN_KEYS.GEN_TARGETS])
        return genes, targets, ~_numpy(batch[TOKEN_KEYS.GEN_PADDING_MASK]).astype(bool)
    genes = _numpy(batch[TOKEN_KEYS.GENE_IDS])
    values = _numpy(batch[TOKEN_KEYS.VALUES])
    targets = _numpy(batch.get(TOKEN_KEYS.TARGET_VALUES, values))
    if masked_only:
        return genes, targets, values == MASK_VALUE
    return genes, targets, ~_numpy(batch[TOKEN_KEYS.PADDING_MASK]).astype(bool)


def fit_per_gene_means(
    batches: Iterable[Mapping],
    n_tokens: int,
    *,
    ignore_ids: Sequence[int] = (),
    max_batches: int | None = None,
) -> np.ndarray:
    """Mean target value of each vocabulary gene over training minibatches.

    Parameters
    ----------
    batches
        Collated minibatches (``gene_ids``, ``values``, ``target_values``,
        ``padding_mask``; or the generative ``gen_*`` tensors).
    n_tokens
        Vocabulary size.
    ignore_ids
        Token ids not to fit (``<cls>``).
    max_batches
        Stop after this many minibatches (``None``: all).

    Returns
    -------
    ``(n_tokens,)`` float array; genes never seen get the mean of all fitted positions.
    """
    sums = np.zeros(n_tokens, dtype=np.float64)
    counts = np.zeros(n_tokens, dtype=np.float64)
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        genes, targets, keep = _expression_positions(batch, masked_only=False)
        if len(ignore_ids):
            keep &= ~np.isin(genes, np.asarray(ignore_ids))
        np.add.at(sums, genes[keep].astype(np.int64), targets[keep].astype(np.float64))
        np.add.at(counts, genes[keep].astype(np.int64), 1.0)
    if counts.sum() == 0:
        raise ValueError("No positions to fit the per-gene means on.")
    overall = sums.sum() / counts.sum()
    return np.where(counts > 0, sums / np.maximum(counts, 1.0), overall)


def score_per_gene_means(
    means: np.ndarray, batches: Iterable[Mapping], *, max_batches: int | None = None
) -> float:
    """Masked MSE of the per-gene-mean predictor, aggregated as the validation loss is.

    Each minibatch's MSE over its scored positions (masked values; generated genes) is
    averaged over minibatches with weights equal to their number of cells; minibatches
    without scored positions are skipped, as the model's loss term is.

    Parameters
    ----------
    means
        Output of :func:`fit_per_gene_means`.
    batches
        Collated validation minibatches.
    max_batches
        Stop after this many minibatches.

    Returns
    -------
    The MSE (``nan`` when no minibatch has a scored position).
    """
    total, weight = 0.0, 0.0
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        genes, targets, scored = _expression_positions(batch, masked_only=True)
        if not scored.any():
            continue
        err = (means[genes[scored].astype(np.int64)] - targets[scored]) ** 2
        n_cells = genes.shape[0]
        total += float(err.mean()) * n_cells
        weight += n_cells
    return total / weight if weight else float("nan")


def per_gene_mean_mse(
    train_batches: Iterable[Mapping],
    val_batches: Iterable[Mapping],
    n_tokens: int,
    *,
    ignore_ids: Sequence[int] = (),
    max_batches: int | None = None,
) -> float:
    """Fit the per-gene-mean predictor on training minibatches, score it on validation ones.

    See :func:`fit_per_gene_means` and :func:`score_per_gene_means`.
    """
    means = fit_per_gene_means(
        train_batches, n_tokens, ignore_ids=ignore_ids, max_batches=max_batches
    )
    return score_per_gene_means(means, val_batches, max_batches=max_batches)


# ----------------------------------------------------------------------------- verdict
def no_better_than_trivial(
    value: float,
    trivial: float,
    *,
    higher_is_better: bool,
    margin: float | None = None,
) -> bool:
    """Whether a validation metric fails to beat the trivial predictor's.

    Parameters
    ----------
    value, trivial
        The model's and the trivial predictor's validation metric.
    higher_is_better
        ``True`` for accuracy (needs ``value > trivial + margin``, default margin
        :data:`ACCURACY_MARGIN`); ``False`` for a loss (needs
        ``value < trivial * (1 - margin)``, default :data:`MSE_RELATIVE_MARGIN`).

    Returns
    -------
    ``True`` when the model is no better (``False`` when either value is not finite).
    """
    if not (np.isfinite(value) and np.isfinite(trivial)):
        return False
    if higher_is_better:
        margin = ACCURACY_MARGIN if margin is None else margin
        return value <= trivial + margin
    margin = MSE_RELATIVE_MARGIN if margin is None else margin
    return value >= trivial * (1.0 - margin)


def trivial_warning(
    *,
    task: str,
    metric: str,
    value: float,
    trivial: float,
    baseline: str,
    n_cells: int | None,
    regime: str,
    lr: float,
    max_epochs: int,
    from_scratch_lr: float | None = None,
    from_scratch_epochs: int | None = None,
) -> str:
    """Text of the warning that a trained model is no better than a trivial predictor.

    Parameters
    ----------
    task
        Training task (preset name).
    metric
        Name of the validation metric (``"accuracy"``, ``"GEP MSE"``).
    value, trivial
        The model's and the trivial predictor's value.
    baseline
        What the trivial predictor is (``"always predicting 'CD4 T'"``).
    n_cells
        Validation cells (``None``: unknown).
    regime
        ``"from_scratch"`` or ``"fine_tune"``.
    lr, max_epochs
        Values the run used.
    from_scratch_lr, from_scratch_epochs
        The preset's from-scratch values, suggested when the run used less.

    Returns
    -------
    One paragraph naming the likely cause and the fix.
    """
    where = f"its {n_cells} validation cells" if n_cells else "its validation cells"
    lines = [
        f"train(task={task!r}): the trained model is no better than a trivial predictor on "
        f"{where}: validation {metric} {value:.4g} vs {trivial:.4g} for {baseline}."
    ]
    if regime == "from_scratch":
        lines.append(
            f"Likely cause: a randomly initialised model trained too briefly or too slowly "
            f"(lr={lr:g}, max_epochs={max_epochs})."
        )
        fixes = []
        if from_scratch_epochs is not None and max_epochs < from_scratch_epochs:
            fixes.append(f"more epochs (max_epochs={from_scratch_epochs} or more)")
        else:
            fixes.append("more epochs")
        if from_scratch_lr is not None and lr < from_scratch_lr:
            fixes.append(f"a higher learning rate (lr={from_scratch_lr:g})")
        else:
            fixes.append("a higher learning rate")
        fixes.append("or pretrained weights (SCGPT.from_pretrained)")
        lines.append("Fix: " + ", ".join(fixes) + ".")
    else:
        lines.append(
            f"Likely cause: too little fine-tuning (lr={lr:g}, max_epochs={max_epochs}) or "
            "data the pretrained model does not fit (check model.gene_coverage(): few genes "
            "in the vocabulary leave the model little to read)."
        )
        lines.append(
            "Fix: more epochs or a higher learning rate, and gene names that match the "
            "model's vocabulary (symbols, or gene_symbols_key= in setup_anndata)."
        )
    return " ".join(lines)
