from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest

from scvi_scgpt import pl, tl

matplotlib.use("Agg")


def test_program_plots():
    import anndata as ad
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(2, 8))
    emb = pd.DataFrame(
        np.repeat(centers, 6, 0) + 0.1 * rng.normal(size=(12, 8)),
        index=[f"g{i}" for i in range(12)],
    )
    net = tl.gene_similarity_network(emb, n_neighbors=3, min_program_size=3)
    fig = pl.program_network(net, "0")
    assert fig.axes[0].get_title() == "program 0"
    x = rng.poisson(2.0, size=(30, 12)).astype(np.float32)
    adata = ad.AnnData(
        np.log1p(x),
        obs=pd.DataFrame({"ct": ["a", "b", "c"] * 10}),
        var=pd.DataFrame(index=emb.index),
    )
    tl.score_gene_programs(adata, net)
    fig = pl.program_scores_heatmap(adata, groupby="ct")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0", "1"]
    with pytest.raises(ValueError, match="groupby|column"):
        pl.program_scores_heatmap(adata, groupby="nope")
    plt.close("all")
