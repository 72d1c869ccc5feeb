from __future__ import annotations

import matplotlib
import pytest

from scvi_scgpt import pl, tl
from scvi_scgpt.datasets import simulate_perturbseq

matplotlib.use("Agg")


def test_perturbation_response_plot():
    import matplotlib.pyplot as plt

    sim = simulate_perturbseq(
        n_genes=30, n_regulators=6, n_doubles=2, n_control_cells=30, cells_per_perturbation=10
    )
    conditions = ["TF01+ctrl", "TF02+ctrl"]
    truth = tl.condition_means(sim, conditions=conditions)
    base = tl.perturbation_baselines(sim, conditions, train_conditions=["ctrl", "TF03+ctrl"])
    fig = pl.perturbation_response({"observed mean": truth, **base}, sim, "TF01+ctrl", n_de=8)
    ax = fig.axes[0]
    assert len(ax.get_xticklabels()) == 8 and ax.get_title() == "TF01+ctrl"
    assert len(ax.get_legend().get_texts()) == 1 + len(base) == 7
    plt.close(fig)
    with pytest.raises(ValueError, match="no prediction"):
        pl.perturbation_response(truth, sim, "TF05+ctrl")
