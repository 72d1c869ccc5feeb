from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from scvi_scgpt.datasets import simulate_atlas

SMALL = {"n_cells": 1500, "n_genes": 300, "n_grn_genes": 120, "n_regulators": 16}


@pytest.fixture(scope="module")
def atlas():
    return simulate_atlas(**SMALL, seed=1)


def test_reproducible_and_counts(atlas):
    again = simulate_atlas(**SMALL, seed=1)
    assert (atlas.X != again.X).nnz == 0
    assert (simulate_atlas(**SMALL, seed=2).X != atlas.X).nnz > 0
    assert sp.isspmatrix_csr(atlas.X) and atlas.X.dtype == np.float32
    assert np.array_equal(atlas.X.data, np.round(atlas.X.data)) and atlas.X.data.min() > 0
    assert (np.asarray(atlas.X.sum(1)).ravel() == atlas.obs["total_counts"]).all()


def test_truth_is_stored(atlas):
    var = atlas.var
    assert var["in_grn"].sum() == 120 and var["is_regulator"].sum() == 16
    grn = atlas.uns["grn"]
    assert set(grn["source"]) <= set(var.index[var["is_regulator"]])
    assert set(grn["target"]) <= set(var.index[var["in_grn"]])
    # every network target belongs to the programme of its strongest regulator
    targets = var.index[var["in_grn"] & ~var["is_regulator"]]
    assert var.loc[targets, "programme"].notna().all()
    assert var.loc[~var["in_grn"], "programme"].isna().all()
    strongest = grn.loc[grn["weight"].abs().groupby(grn["target"]).idxmax()]
    by_target = dict(zip(strongest["target"], strongest["source"]))
    assert all(var.loc[t, "programme"] == by_target[t] for t in targets)
    assert set(atlas.obs["cell_type"].cat.categories) == {f"type{i}" for i in range(6)}


def _log_norm(x):
    x = x.toarray()
    return np.log1p(x / x.sum(1, keepdims=True) * 1e4)


def test_edges_show_in_coexpression_and_types_in_the_network(atlas):
    x = _log_norm(atlas.X)
    corr = np.corrcoef(x.T)
    pos = {g: i for i, g in enumerate(atlas.var_names)}
    grn = atlas.uns["grn"]
    strong = grn[grn["weight"].abs() > 0.5]
    edge_corr = np.abs([corr[pos[s], pos[t]] for s, t in zip(strong["source"], strong["target"])])
    background = ~atlas.var["in_grn"].to_numpy()
    bg_corr = np.abs(corr[np.ix_(background, background)][np.triu_indices(background.sum(), 1)])
    assert np.median(edge_corr) > 3 * np.median(bg_corr)
    # cell types differ in network genes, not in background genes
    types = atlas.obs["cell_type"].to_numpy()
    means = np.stack([x[types == t].mean(0) for t in np.unique(types)])
    spread = means.std(0)
    assert spread[atlas.var["in_grn"].to_numpy()].mean() > 3 * spread[background].mean()


def test_bad_inputs():
    with pytest.raises(ValueError, match="n_grn_genes"):
        simulate_atlas(n_genes=50, n_grn_genes=60)
    with pytest.raises(ValueError, match="unique names"):
        simulate_atlas(**SMALL, gene_names=["a"] * 300)
