from __future__ import annotations

import numpy as np
import pytest

from scvi_scgpt import tl
from scvi_scgpt.datasets import simulate_perturbseq

KW = {
    "n_genes": 60,
    "n_regulators": 8,
    "n_control_cells": 200,
    "cells_per_perturbation": 80,
    "n_doubles": 3,
}


@pytest.fixture(scope="module")
def sim():
    return simulate_perturbseq(seed=3, **KW)


def test_reproducible(sim):
    again = simulate_perturbseq(seed=3, **KW)
    assert (sim.layers["counts"] != again.layers["counts"]).nnz == 0
    assert sim.uns["grn"].equals(again.uns["grn"])
    other = simulate_perturbseq(seed=4, **KW)
    assert (sim.layers["counts"] != other.layers["counts"]).nnz > 0


def test_gears_format(sim, tmp_path):
    obs = sim.obs
    assert {"condition", "cell_type", "condition_name", "dose_val", "control"} <= set(obs)
    conditions = set(obs["condition"])
    assert "ctrl" in conditions and "TF00+ctrl" in conditions
    doubles = [c for c in conditions if "ctrl" not in c]
    assert len(doubles) == 3 and all(len(c.split("+")) == 2 for c in doubles)
    ctrl = obs["condition"] == "ctrl"
    assert (obs.loc[ctrl, "control"] == 1).all() and (obs.loc[~ctrl, "control"] == 0).all()
    assert set(obs.loc[ctrl, "dose_val"]) == {"1"} and set(obs.loc[~ctrl, "dose_val"]) == {"1+1"}
    row = obs.iloc[-1]
    assert row["condition_name"] == f"{row['cell_type']}_{row['condition']}_{row['dose_val']}"
    assert ctrl.sum() == 200 and len(obs) == 200 + 80 * (8 + 3)
    assert list(sim.var["gene_name"]) == list(sim.var_names)
    assert sim.var["is_regulator"].sum() == 8
    grn = sim.uns["grn"]
    assert list(grn.columns) == ["source", "target", "weight"]
    assert set(grn["target"]) == set(sim.var_names[2:])  # every non-master gene is regulated
    counts = sim.layers["counts"]
    assert np.allclose(counts.data, np.round(counts.data))
    libs = np.asarray(counts.sum(1)).ravel()
    assert libs.std() / libs.mean() > 0.2  # library-size variation
    expm1 = np.expm1(sim.X[:5].toarray())
    np.testing.assert_allclose(expm1.sum(1), 1e4, rtol=1e-3)  # log1p of counts per 10k
    path = tmp_path / "sim.h5ad"
    sim.write_h5ad(path)
    import anndata as ad

    back = ad.read_h5ad(path)
    assert back.uns["grn"].shape == grn.shape


def _descendants(grn, gene):
    children = grn.groupby("source")["target"].apply(set).to_dict()
    seen, todo = set(), [gene]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def test_knockout_propagates_downstream(sim):
    grn = sim.uns["grn"]
    x = sim.X.toarray()
    cond = sim.obs["condition"].astype(str).to_numpy()
    control_mean = x[cond == "ctrl"].mean(0)
    genes = list(sim.var_names)
    # a master regulator with at least one regulator child: its grandchildren must move too
    master = "TF00"
    direct = set(grn.loc[grn["source"] == master, "target"])
    below = _descendants(grn, master)
    indirect = below - direct - {master}
    assert indirect, "the simulated hierarchy has at least two levels below TF00"
    delta = x[cond == f"{master}+ctrl"].mean(0) - control_mean
    pos = {g: i for i, g in enumerate(genes)}
    assert delta[pos[master]] < -1.0  # the knocked gene itself drops
    outside = [pos[g] for g in genes if g not in below and g != master]
    noise = np.abs(delta[outside]).mean()
    assert np.abs(delta[[pos[g] for g in direct]]).mean() > 3 * noise
    assert np.abs(delta[[pos[g] for g in indirect]]).mean() > 2 * noise
    # a single-parent direct target moves against the edge sign (its regulator goes down)
    single = grn.groupby("target").filter(lambda g: len(g) == 1)
    edge = single[single["source"] == master]
    for target, weight in zip(edge["target"], edge["weight"]):
        assert np.sign(delta[pos[target]]) == -np.sign(weight)


def test_bad_simulation_inputs():
    with pytest.raises(ValueError, match="n_regulators"):
        simulate_perturbseq(n_genes=5, n_regulators=5)
    with pytest.raises(ValueError, match="perturbed_genes"):
        simulate_perturbseq(n_genes=20, n_regulators=4, perturbed_genes=["nope"])
    with pytest.raises(ValueError, match="gene_names"):
        simulate_perturbseq(n_genes=20, n_regulators=4, gene_names=["a"] * 20)


def test_interactions_change_only_their_doubles_in_the_stated_direction():
    kwargs = {
        "n_genes": 60,
        "n_regulators": 8,
        "n_doubles": 6,
        "n_control_cells": 200,
        "cells_per_perturbation": 200,
    }
    plain = simulate_perturbseq(**kwargs, seed=3)
    inter = simulate_perturbseq(**kwargs, n_interactions=3, interaction_strength=0.8, seed=3)
    table = inter.uns["interactions"]
    assert list(table["kind"]) == ["synergy", "buffering", "epistasis"]
    assert plain.uns["interactions"].empty
    labels = inter.obs["condition"].astype(str).to_numpy()
    assert set(table["condition"]) <= set(labels)
    for cond in [c for c in set(labels) if "+ctrl" in c or c == "ctrl"]:  # singles unchanged
        rows = labels == cond
        assert (plain.X[rows] != inter.X[rows]).nnz == 0
    ctrl = tl.condition_means(inter, conditions=["ctrl"]).to_numpy()[0]
    grn = inter.uns["grn"]
    for _, row in table.iterrows():
        a, b, kind = row["gene_a"], row["gene_b"], row["kind"]
        masked = b if kind == "epistasis" else None
        targets = sorted(
            set(grn.loc[grn["source"].isin([masked] if masked else [a, b]), "target"])
        )
        targets = [t for t in targets if t not in (a, b)]
        with_int = tl.condition_means(inter, conditions=[row["condition"]]).loc[:, targets]
        without = tl.condition_means(plain, conditions=[row["condition"]]).loc[:, targets]
        d_int = np.abs(with_int.to_numpy()[0] - ctrl[inter.var_names.get_indexer(targets)])
        d_plain = np.abs(without.to_numpy()[0] - ctrl[inter.var_names.get_indexer(targets)])
        if kind == "synergy":
            assert d_int.mean() > d_plain.mean()
        elif kind == "buffering":
            assert d_int.mean() < d_plain.mean()
        else:  # on b's targets the double looks like a alone
            alone = tl.condition_means(inter, conditions=[f"{a}+ctrl"]).loc[:, targets]
            gap_int = np.abs(with_int.to_numpy() - alone.to_numpy()).mean()
            gap_plain = np.abs(without.to_numpy() - alone.to_numpy()).mean()
            assert gap_int < gap_plain
    with pytest.raises(ValueError, match="exceeds"):
        simulate_perturbseq(**kwargs, n_interactions=7)
