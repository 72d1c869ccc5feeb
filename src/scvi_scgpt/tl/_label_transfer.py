"""kNN label transfer between embeddings, and cross-validated kNN accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def knn_label_transfer(
    reference: np.ndarray,
    labels: Sequence | np.ndarray | pd.Series,
    query: np.ndarray,
    *,
    n_neighbors: int = 10,
) -> tuple[pd.Categorical, np.ndarray]:
    """Label each query cell by majority vote of its nearest reference cells.

    Neighbours are Euclidean (cosine on L2-normalised embeddings, as in the official
    reference-mapping tutorial). Ties go to the class of the nearer neighbours.

    Parameters
    ----------
    reference
        ``(n_reference, d)`` reference embeddings.
    labels
        ``n_reference`` labels (no missing values).
    query
        ``(n_query, d)`` query embeddings.
    n_neighbors
        Neighbours voting (official: 10).

    Returns
    -------
    The predicted labels (categorical, categories = the reference classes) and the fraction of
    the neighbours that agree with the prediction, per query cell.
    """
    from sklearn.neighbors import NearestNeighbors

    reference = np.asarray(reference)
    query = np.asarray(query)
    labels = pd.Series(np.asarray(labels, dtype=object))
    if reference.ndim != 2 or query.ndim != 2 or reference.shape[1] != query.shape[1]:
        raise ValueError(
            f"reference {reference.shape} and query {query.shape} must be 2-d embeddings of "
            "the same width."
        )
    if len(labels) != len(reference):
        raise ValueError(f"{len(labels)} labels for {len(reference)} reference cells.")
    if labels.isna().any():
        raise ValueError("Reference labels must not be missing; drop unlabelled cells first.")
    if not 1 <= n_neighbors <= len(reference):
        raise ValueError(
            f"n_neighbors={n_neighbors} must be between 1 and the {len(reference)} reference "
            "cells."
        )
    codes, classes = pd.factorize(labels.astype(str))
    _, idx = NearestNeighbors(n_neighbors=n_neighbors).fit(reference).kneighbors(query)
    votes = codes[idx]  # (n_query, k), nearest first
    counts = np.zeros((len(votes), len(classes)), dtype=np.float64)
    rows = np.repeat(np.arange(len(votes)), n_neighbors)
    # one per vote plus a tiny rank bonus, so that ties go to the nearer neighbours
    bonus = np.tile(np.linspace(1e-6, 0, n_neighbors), len(votes))
    np.add.at(counts, (rows, votes.ravel()), 1.0 + bonus)
    winner = counts.argmax(1)
    predicted = pd.Categorical(np.asarray(classes)[winner], categories=classes)
    return predicted, (votes == winner[:, None]).mean(1)


def knn_accuracy(
    embedding: np.ndarray,
    labels: Sequence | np.ndarray,
    *,
    n_neighbors: int = 15,
    n_folds: int = 5,
    seed: int = 0,
) -> dict[str, float | list[float]]:
    """Stratified ``n_folds``-fold cross-validated kNN label accuracy of an embedding.

    Parameters
    ----------
    embedding
        ``(n_cells, d)`` cell embedding.
    labels
        ``n_cells`` labels.
    n_neighbors
        Neighbours of the kNN classifier.
    n_folds, seed
        Cross-validation folds and their shuffling seed.

    Returns
    -------
    ``accuracy_folds``, ``macro_f1_folds`` (lists) and ``accuracy_mean``, ``accuracy_sd``,
    ``macro_f1_mean``, ``macro_f1_sd`` (sample standard deviations).
    """
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.neighbors import KNeighborsClassifier

    embedding = np.asarray(embedding)
    labels = np.asarray(labels).astype(str)
    if len(labels) != len(embedding):
        raise ValueError(f"{len(labels)} labels for {len(embedding)} cells.")
    acc, f1 = [], []
    folds = StratifiedKFold(n_folds, shuffle=True, random_state=seed)
    for train, test in folds.split(embedding, labels):
        knn = KNeighborsClassifier(n_neighbors=n_neighbors).fit(embedding[train], labels[train])
        pred = knn.predict(embedding[test])
        acc.append(float(accuracy_score(labels[test], pred)))
        f1.append(float(f1_score(labels[test], pred, average="macro")))
    return {
        "accuracy_folds": acc,
        "macro_f1_folds": f1,
        "accuracy_mean": float(np.mean(acc)),
        "accuracy_sd": float(np.std(acc, ddof=1)) if len(acc) > 1 else 0.0,
        "macro_f1_mean": float(np.mean(f1)),
        "macro_f1_sd": float(np.std(f1, ddof=1)) if len(f1) > 1 else 0.0,
    }
