"""Trivial predictors: majority class, per-gene mean, and the warning text."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scvi_scgpt.train._trivial import (
    fit_per_gene_means,
    majority_class,
    majority_class_rate,
    no_better_than_trivial,
    per_gene_mean_mse,
    score_per_gene_means,
    trivial_warning,
)


def test_majority_class_and_rate():
    assert majority_class(["a", "b", "b", "c"]) == ("b", 0.5)
    assert majority_class_rate(["a", "b", "b", "c"]) == 0.5
    # fitted on the training labels, scored on the validation ones
    assert majority_class_rate(["a", "a", "b"], reference=["b", "b", "a"]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        majority_class_rate([])


def _batch(genes, values, targets, pad):
    return {
        "gene_ids": torch.tensor(genes),
        "values": torch.tensor(values, dtype=torch.float32),
        "target_values": torch.tensor(targets, dtype=torch.float32),
        "padding_mask": torch.tensor(pad),
    }


def test_per_gene_means_fit_unpadded_positions_and_ignore_cls():
    # gene 9 = <cls>; gene 5 is padding in the second cell
    b = _batch(
        [[9, 1, 2], [9, 1, 5]],
        [[0, 2, 4], [0, 4, -2]],
        [[0, 2, 4], [0, 4, 7]],
        [[False, False, False], [False, False, True]],
    )
    means = fit_per_gene_means([b], 10, ignore_ids=(9,))
    assert means[1] == 3.0 and means[2] == 4.0
    assert means[5] == pytest.approx(10 / 3)  # unseen: mean of all fitted positions
    assert means[9] == pytest.approx(10 / 3)


def test_per_gene_mean_mse_scores_masked_positions_weighted_by_cells():
    train = _batch([[9, 1, 2]], [[0, 2, 6]], [[0, 2, 6]], [[False] * 3])
    # first val batch: one cell, gene 1 masked with target 4 -> error (2 - 4)^2 = 4
    v1 = _batch([[9, 1, 2]], [[0, -1, 6]], [[0, 4, 6]], [[False] * 3])
    # second: two cells, gene 2 masked with targets 6 and 8 -> errors 0 and 4 -> mean 2
    v2 = _batch(
        [[9, 1, 2], [9, 1, 2]],
        [[0, 2, -1], [0, 2, -1]],
        [[0, 2, 6], [0, 2, 8]],
        [[False] * 3] * 2,
    )
    # no masked position: skipped, as the model's loss term is
    v3 = _batch([[9, 1, 2]], [[0, 2, 6]], [[0, 2, 6]], [[False] * 3])
    got = per_gene_mean_mse([train], [v1, v2, v3], 10, ignore_ids=(9,))
    assert got == pytest.approx((4 * 1 + 2 * 2) / 3)
    assert np.isnan(score_per_gene_means(np.zeros(10), [v3]))


def test_per_gene_mean_generative_batches():
    b = {
        "gen_gene_ids": torch.tensor([[1, 2], [1, 0]]),
        "gen_targets": torch.tensor([[2.0, 3.0], [4.0, 0.0]]),
        "gen_padding_mask": torch.tensor([[False, False], [False, True]]),
    }
    means = fit_per_gene_means([b], 3)
    assert means[1] == 3.0 and means[2] == 3.0
    assert score_per_gene_means(means, [b]) == pytest.approx((1 + 0 + 1) / 3)


def test_no_better_than_trivial_margins():
    assert no_better_than_trivial(0.31, 0.30, higher_is_better=True)
    assert not no_better_than_trivial(0.60, 0.30, higher_is_better=True)
    assert no_better_than_trivial(116.1, 116.6, higher_is_better=False)  # the plateau
    assert not no_better_than_trivial(95.0, 116.6, higher_is_better=False)
    assert not no_better_than_trivial(float("nan"), 1.0, higher_is_better=False)


def test_warning_names_cause_and_fix():
    text = trivial_warning(
        task="annotation",
        metric="accuracy",
        value=0.31,
        trivial=0.30,
        baseline="always predicting 'CD4 T'",
        n_cells=50,
        regime="from_scratch",
        lr=1e-4,
        max_epochs=10,
        from_scratch_lr=1e-3,
        from_scratch_epochs=40,
    )
    assert "no better than a trivial predictor" in text and "50 validation cells" in text
    assert "max_epochs=40" in text and "lr=0.001" in text and "from_pretrained" in text
    fine = trivial_warning(
        task="integration",
        metric="GEP MSE",
        value=10.0,
        trivial=10.0,
        baseline="each gene's mean bin",
        n_cells=None,
        regime="fine_tune",
        lr=1e-4,
        max_epochs=15,
    )
    assert "gene_coverage" in fine and "more epochs" in fine
