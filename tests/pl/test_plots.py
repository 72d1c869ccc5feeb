from __future__ import annotations

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest

from scvi_scgpt import pl

matplotlib.use("Agg")


def test_confusion_matrix_counts_and_fractions():
    fig = pl.confusion_matrix(["a", "a", "b"], ["a", "b", "b"], title="t")
    image = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(np.asarray(image), [[0.5, 0.5], [0.0, 1.0]])
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == ["1", "1", "1"]


def test_embedding_panels_leave_adata_untouched():
    rng = np.random.default_rng(0)
    obs = pd.DataFrame({"kind": pd.Categorical(np.repeat(["u", "v"], 20))})
    obs.index = obs.index.astype(str)
    adata = ad.AnnData(np.zeros((40, 2), dtype=np.float32), obs=obs)
    adata.obsm["A"] = rng.normal(size=(40, 5))
    adata.obsm["B"] = rng.normal(size=(40, 3))
    before = (set(adata.obsm), set(adata.obs), set(adata.uns), set(adata.obsp))
    fig = pl.embedding_panels(adata, ["A", "B"], "kind", n_neighbors=5)
    assert len(fig.axes) >= 2
    assert (set(adata.obsm), set(adata.obs), set(adata.uns), set(adata.obsp)) == before
    with pytest.raises(KeyError, match="missing_key"):
        pl.embedding_panels(adata, ["missing_key"], "kind")
