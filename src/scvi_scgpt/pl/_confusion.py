"""Confusion matrix of predicted against true labels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(
    y_true: Sequence | np.ndarray,
    y_pred: Sequence | np.ndarray,
    *,
    classes: Sequence[str] | None = None,
    title: str | None = None,
    ax=None,
):
    """Row-normalised confusion matrix, with the cell counts written in the squares.

    Parameters
    ----------
    y_true, y_pred
        True and predicted labels.
    classes
        Class order (default: sorted union of both).
    title
        Axes title.
    ax
        Matplotlib axes to draw on (default: a new figure).

    Returns
    -------
    The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    y_true = np.asarray(y_true).astype(str)
    y_pred = np.asarray(y_pred).astype(str)
    if classes is None:
        classes = sorted(set(y_true) | set(y_pred))
    classes = [str(c) for c in classes]
    position = {c: i for i, c in enumerate(classes)}
    counts = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for t, p in zip(y_true, y_pred):
        if t in position and p in position:
            counts[position[t], position[p]] += 1
    fraction = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    if ax is None:
        side = 2.0 + 0.6 * len(classes)
        fig, ax = plt.subplots(figsize=(side + 1.0, side))
    else:
        fig = ax.figure
    image = ax.imshow(fraction, cmap="Blues", vmin=0, vmax=1)
    for i, j in zip(*np.nonzero(counts)):
        color = "white" if fraction[i, j] > 0.5 else "black"
        ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of true class")
    fig.tight_layout()
    return fig
