from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from scvi_scgpt import tl
from scvi_scgpt.datasets import simulate_perturbseq


def tiny(conditions: dict[str, np.ndarray], genes=("A", "B", "C", "D")) -> ad.AnnData:
    """Cells from ``{condition: (n_cells, n_genes) values}``."""
    x = np.vstack(list(conditions.values())).astype(np.float32)
    labels = [c for c, v in conditions.items() for _ in range(len(v))]
    obs = pd.DataFrame({"condition": labels}, index=[f"c{i}" for i in range(len(labels))])
    return ad.AnnData(x, obs=obs, var=pd.DataFrame(index=list(genes)))


CTRL = np.array([[1.0, 2.0, 0.0, 3.0], [1.2, 2.2, 0.0, 2.6], [0.8, 1.8, 0.2, 3.4]])
A = np.array([[0.1, 2.5, 1.0, 3.0], [0.3, 2.9, 1.4, 3.2], [0.2, 2.7, 1.2, 2.8]])
B = np.array([[1.0, 1.0, 0.0, 4.0], [1.1, 1.2, 0.1, 4.4], [0.9, 0.8, 0.2, 4.2]])
AB = np.array([[0.1, 1.5, 1.0, 4.1], [0.2, 1.9, 1.1, 4.3]])


@pytest.fixture
def data() -> ad.AnnData:
    return tiny({"ctrl": CTRL, "A+ctrl": A, "B+ctrl": B, "A+B": AB})


def test_de_ranking_is_welch_t_by_absolute_value(data):
    t = stats.ttest_ind(A, CTRL, equal_var=False).statistic
    ranked = tl.rank_de_genes(data, n_top=None)
    assert ranked["A+ctrl"] == list(np.array(["A", "B", "C", "D"])[np.argsort(-np.abs(t))])
    assert set(ranked) == {"A+ctrl", "B+ctrl", "A+B"}
    assert len(tl.rank_de_genes(data, n_top=2)["A+B"]) == 2


def test_metrics_hand_computed(data):
    pred = pd.DataFrame([[0.0, 2.0, 1.0, 3.5]], index=["A+ctrl"], columns=list("ABCD"))
    table = tl.perturbation_metrics(pred, data, n_de=2)
    ctrl, truth, p = CTRL.mean(0), A.mean(0), pred.to_numpy()[0]
    de = np.argsort(-np.abs(stats.ttest_ind(A, CTRL, equal_var=False).statistic))[:2]
    row = table.loc["A+ctrl"]
    assert row["pearson"] == pytest.approx(np.corrcoef(p, truth)[0, 1])
    assert row["pearson_de"] == pytest.approx(np.corrcoef(p[de], truth[de])[0, 1])
    assert row["pearson_delta"] == pytest.approx(np.corrcoef(p - ctrl, truth - ctrl)[0, 1])
    assert "mse" not in table  # cell-eval's mse replaces ours
    assert row["mse_de"] == pytest.approx(np.mean((p[de] - truth[de]) ** 2))
    right = np.sign(p[de] - ctrl[de]) == np.sign(truth[de] - ctrl[de])
    assert row["frac_correct_direction_de"] == pytest.approx(right.mean())
    assert row["n_cells"] == 3
    assert table.index[-1] == "mean"
    assert table.loc["mean", "pearson"] == pytest.approx(row["pearson"])


def test_metrics_perfect_and_no_change(data):
    means = tl.condition_means(data, conditions=["A+ctrl", "A+B"])
    table = tl.perturbation_metrics(means, data)
    assert np.allclose(table[["pearson", "pearson_delta", "pearson_de_delta"]], 1.0)
    assert np.allclose(table[["mse_de", "wmse", "l2_top_expressed"]], 0.0)
    assert np.allclose(table[["pearson_delta_centroid"]], 1.0)
    ctrl = tl.condition_means(data, conditions=["ctrl"]).to_numpy()[0]
    flat = pd.DataFrame([ctrl] * 2, index=["A+ctrl", "A+B"], columns=list("ABCD"))
    no_change = tl.perturbation_metrics(flat, data)
    assert np.isnan(no_change.loc["A+ctrl", "pearson_delta"])
    assert no_change.loc["A+ctrl", "frac_correct_direction_de"] == 0.25  # only D: no change


def test_calibrated_scores_hand_computed():
    ab_cells = AB + np.array([0.5, -0.4, 0.3, 0.0])  # interactions on A, B and C
    data = tiny({"ctrl": CTRL, "A+ctrl": A, "B+ctrl": B, "A+B": ab_cells})
    pred = pd.DataFrame(
        [[0.3, 1.2, 1.5, 4.0], [0.0, 2.0, 1.0, 3.5]], index=["A+B", "A+ctrl"], columns=list("ABCD")
    )
    table = tl.perturbation_metrics(pred, data, n_top_expressed=2, interaction_threshold=0.05)
    ctrl, a, b, ab = CTRL.mean(0), A.mean(0), B.mean(0), ab_cells.mean(0)
    p = pred.loc["A+B"].to_numpy()
    row = table.loc["A+B"]
    top = np.argsort(-ctrl)[:2]  # D and B
    assert row["l2_top_expressed"] == pytest.approx(np.linalg.norm(p[top] - ab[top]))
    centroid = (a + b + ab) / 3
    assert row["pearson_delta_centroid"] == pytest.approx(
        np.corrcoef(p - centroid, ab - centroid)[0, 1]
    )
    w = np.abs(stats.ttest_ind(ab_cells, CTRL, equal_var=False).statistic)
    w = np.nan_to_num(w) / np.nan_to_num(w).sum()
    assert row["wmse"] == pytest.approx((w * (p - ab) ** 2).sum())
    true_int = ab - (a + b - ctrl)
    pred_int = p - (a + b - ctrl)
    keep = np.abs(true_int) > 0.05
    assert row["n_interaction_genes"] == keep.sum() >= 3
    assert row["interaction_pearson"] == pytest.approx(
        np.corrcoef(pred_int[keep], true_int[keep])[0, 1]
    )
    agree = np.mean(np.sign(pred_int[keep]) == np.sign(true_int[keep]))
    assert row["interaction_sign"] == pytest.approx(agree)
    assert np.isnan(table.loc["A+ctrl", "interaction_pearson"])  # a single has none
    additive = tl.perturbation_baselines(
        data, ["A+B"], train_conditions=["A+ctrl", "B+ctrl"], methods=["additive"]
    )["additive"]
    flat = tl.perturbation_metrics(additive, data, interaction_threshold=0.05).loc["A+B"]
    assert np.isnan(flat["interaction_pearson"]) and flat["interaction_sign"] == 0.0


def test_infinite_welch_t_counts_most_in_wmse_and_de_ranking():
    # gene C: 0 in every control cell and 1.5 in every A cell, so |t| is infinite
    ctrl = CTRL.copy()
    ctrl[:, 2] = 0.0
    a = A.copy()
    a[:, 2] = 1.5
    data = tiny({"ctrl": ctrl, "A+ctrl": a, "B+ctrl": B})
    pred = pd.DataFrame([[0.0, 2.0, 1.0, 3.5]], index=["A+ctrl"], columns=list("ABCD"))
    row = tl.perturbation_metrics(pred, data, n_de=2).loc["A+ctrl"]
    t = np.abs(stats.ttest_ind(a, ctrl, equal_var=False).statistic)
    assert np.isinf(t[2])
    w = np.where(np.isinf(t), t[np.isfinite(t)].max(), t)
    w = w / w.sum()
    truth = a.mean(0)
    assert row["wmse"] == pytest.approx((w * (pred.to_numpy()[0] - truth) ** 2).sum())
    assert tl.rank_de_genes(data, n_top=1)["A+ctrl"] == ["C"]  # the most separated gene


def test_metrics_from_means_need_de_genes(data):
    means = tl.condition_means(data)
    pred = means.loc[["A+ctrl"]]
    with pytest.raises(ValueError, match="needs cells"):
        tl.perturbation_metrics(pred, means, CTRL.mean(0))
    table = tl.perturbation_metrics(pred, means, CTRL.mean(0), de_genes={"A+ctrl": ["A", "C"]})
    assert table.loc["A+ctrl", "pearson_de"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="No observed cells"):
        tl.perturbation_metrics(means.loc[["ctrl"]].rename(index={"ctrl": "Z+ctrl"}), data)


def test_baselines_hand_computed(data):
    train = ["ctrl", "A+ctrl", "B+ctrl"]
    out = tl.perturbation_baselines(data, ["A+B", ["B"], "C+ctrl"], train_conditions=train)
    assert list(out) == [
        "no_change",
        "train_mean",
        "additive",
        "scaled_additive",
        "matching_mean",
        "linear",
    ]
    ctrl, a, b = CTRL.mean(0), A.mean(0), B.mean(0)
    assert list(out["additive"].index) == ["A+B", "B+ctrl", "C+ctrl"]
    assert np.allclose(out["no_change"].to_numpy(), ctrl)
    assert np.allclose(out["train_mean"].to_numpy(), (a + b) / 2)
    assert np.allclose(out["additive"].loc["A+B"], ctrl + (a - ctrl) + (b - ctrl))
    assert np.allclose(out["additive"].loc["B+ctrl"], b)
    assert np.allclose(out["additive"].loc["C+ctrl"], ctrl)  # no training single of C
    assert np.isfinite(out["linear"].to_numpy()).all()
    assert "A+B" in data.obs["condition"].to_numpy()  # untouched
    with pytest.raises(ValueError, match="Unknown baselines"):
        tl.perturbation_baselines(data, ["A+B"], train_conditions=train, methods=["gears"])
    with pytest.raises(ValueError, match="not a measured gene"):
        tl.perturbation_baselines(data, ["Z+ctrl"], train_conditions=train)


def test_scaled_additive_and_matching_mean_hand_computed(data):
    ctrl, a, b, ab = CTRL.mean(0), A.mean(0), B.mean(0), AB.mean(0)
    train = ["ctrl", "A+ctrl", "B+ctrl", "A+B"]
    out = tl.perturbation_baselines(
        data,
        ["A+B", "C+ctrl", "A+C"],
        train_conditions=train,
        methods=["scaled_additive", "matching_mean"],
    )
    s = (a - ctrl) + (b - ctrl)
    alpha = s @ (ab - ctrl) / (s @ s)
    scaled = out["scaled_additive"]
    assert scaled.attrs["alpha"] == pytest.approx(alpha)
    assert np.allclose(scaled.loc["A+B"], ctrl + alpha * s)
    assert np.allclose(scaled.loc["A+C"], ctrl + alpha * (a - ctrl))
    centroid = (a + b + ab) / 3  # the training perturbations' profiles
    match = out["matching_mean"]
    assert np.allclose(match.loc["A+B"], (a + b) / 2)
    assert np.allclose(match.loc["C+ctrl"], centroid)
    assert np.allclose(match.loc["A+C"], (a + centroid) / 2)
    # without a training double, alpha is 1 (plain additive)
    plain = tl.perturbation_baselines(
        data, ["A+B"], train_conditions=train[:3], methods=["scaled_additive", "additive"]
    )
    assert plain["scaled_additive"].attrs["alpha"] == 1.0
    assert np.allclose(plain["scaled_additive"], plain["additive"])


def test_linear_model_is_the_two_sided_ridge_solution():
    rng = np.random.default_rng(0)
    genes = [f"g{i}" for i in range(8)]
    train = ["g0+ctrl", "g1+ctrl", "g2+ctrl", "g3+ctrl", "g0+g1", "g2+g4"]
    data = tiny({c: rng.normal(size=(3, 8)) for c in ["ctrl", *train]}, genes=genes)
    pred = tl.perturbation_baselines(
        data, ["g4+ctrl", "g1+g3"], train_conditions=train, methods=["linear"], n_components=3
    )["linear"]
    means = tl.condition_means(data, conditions=train).to_numpy().T  # genes x conditions
    b = means.mean(1)
    u, s, _ = np.linalg.svd(means - b[:, None], full_matrices=False)
    g = u[:, :3] * s[:3]
    p = np.stack([g[[int(x[1]) for x in c.split("+") if x != "ctrl"]].sum(0) for c in train], 1)
    eye = np.eye(3)
    w = np.linalg.inv(g.T @ g + 0.1 * eye) @ g.T @ (means - b[:, None]) @ p.T
    w = w @ np.linalg.inv(p @ p.T + 0.1 * eye)
    assert np.allclose(pred.loc["g4+ctrl"], b + g @ w @ g[4])
    assert np.allclose(pred.loc["g1+g3"], b + g @ w @ (g[1] + g[3]))


def test_split_subgroups_and_reproducibility():
    sim = simulate_perturbseq(
        n_genes=40, n_regulators=12, n_doubles=30, n_control_cells=20, cells_per_perturbation=3
    )
    split = tl.perturbation_split(sim, seed=1)
    test, val, train = set(split["test"]), set(split["val"]), set(split["train"])
    assert "ctrl" in train and not (test & val or test & train or val & train)
    conditions = set(sim.obs["condition"].astype(str))
    assert train | val | test == conditions
    groups = split["test_subgroup"]
    assert set().union(*map(set, groups.values())) == test
    singles_seen = {c.split("+")[0] for c in train | val if c.endswith("+ctrl")}
    assert len(singles_seen) == int(12 * 0.75)
    for cond in groups["unseen_single"]:
        assert cond.split("+")[0] not in singles_seen
    for name, n_seen in (("combo_seen0", 0), ("combo_seen1", 1), ("combo_seen2", 2)):
        for cond in groups[name]:
            assert sum(g in singles_seen for g in cond.split("+")) == n_seen
    assert groups["combo_seen2"]
    assert sim.obs["split"].astype(str).map({"train": 0, "val": 1, "test": 2}).notna().all()
    assert (sim.obs.loc[sim.obs["condition"] == "ctrl", "split"] == "train").all()
    again = tl.perturbation_split(sim, seed=1, key_added=None)
    assert again["test"] == split["test"] and again["val"] == split["val"]
    other = tl.perturbation_split(sim, seed=2, key_added=None)
    assert other["test"] != split["test"]
    sub = tl.split_subgroups(split)
    assert set(sub.index) == test and sub[groups["combo_seen1"][0]] == "combo_seen1"


@pytest.mark.parametrize(
    ("bad", "match"),
    [("A++B", "Malformed"), ("+", "Malformed"), ("Z+ctrl", "not a measured gene")],
)
def test_bad_conditions_raise_and_leave_adata_untouched(data, bad, match):
    obs = data.obs.copy()
    obs["condition"] = obs["condition"].astype(str)
    obs.iloc[-1, 0] = bad
    broken = ad.AnnData(data.X, obs=obs, var=data.var)
    with pytest.raises(ValueError, match=match):
        tl.perturbation_split(broken)
    assert "split" not in broken.obs


def test_missing_key_and_control(data):
    with pytest.raises(KeyError, match="perturbation_key"):
        tl.perturbation_split(data, perturbation_key="guide")
    with pytest.raises(ValueError, match="No control cells"):
        tl.perturbation_split(data, control_group="non-targeting")
    with pytest.raises(ValueError, match="fraction|must be in"):
        tl.perturbation_split(data, train_gene_set_size=1.5)


def test_cell_eval_pair_lines_up_and_rejects_bad_inputs(data):
    pred = tl.condition_means(data, conditions=["A+ctrl", "A+B"])
    adata_pred, real = tl.cell_eval_pair(pred, data)
    assert list(adata_pred.var_names) == list(real.var_names) == list(data.var_names)
    assert (
        set(adata_pred.obs["condition"])
        == set(real.obs["condition"])
        == {
            "ctrl",
            "A+ctrl",
            "A+B",
        }
    )
    for cond in ("A+ctrl", "A+B"):
        rows = adata_pred.obs["condition"].to_numpy() == cond
        assert rows.sum() == (real.obs["condition"].to_numpy() == cond).sum()
    # predicted cells: control cells shifted by the predicted change (clipped at 0)
    ctrl_rows = adata_pred.obs["condition"].to_numpy() == "ctrl"
    np.testing.assert_allclose(adata_pred.X[ctrl_rows], CTRL, rtol=1e-6)
    shifted = adata_pred.X[adata_pred.obs["condition"].to_numpy() == "A+ctrl"]
    expected = np.clip(CTRL + (A.mean(0) - CTRL.mean(0)), 0, None)
    assert all(np.isclose(expected, row, atol=1e-5).all(1).any() for row in shifted)
    with pytest.raises(ValueError, match="lack genes"):
        tl.cell_eval_pair(pred.drop(columns="C"), data)
    nan = pred.copy()
    nan.iloc[0, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        tl.cell_eval_pair(nan, data)
    with pytest.raises(ValueError, match="B\\+A"):
        tl.cell_eval_pair(pred.rename(index={"A+B": "Z+ctrl"}), data)
    with pytest.raises(ValueError, match="control"):
        tl.cell_eval_pair(tl.condition_means(data, conditions=["ctrl"]), data)
    no_ctrl = data[data.obs["condition"] != "ctrl"].copy()
    with pytest.raises(ValueError, match="2 'ctrl' cells"):
        tl.cell_eval_pair(pred, no_ctrl)


def test_cell_eval_metrics_rank_the_truth_above_no_change():
    pytest.importorskip("cell_eval")
    sim = simulate_perturbseq(
        n_genes=40, n_regulators=6, n_doubles=2, n_control_cells=40, cells_per_perturbation=12
    )
    conds = [c for c in sim.obs["condition"].unique() if c != "ctrl"]
    preds = {"truth": tl.condition_means(sim, conditions=conds)}
    preds |= tl.perturbation_baselines(sim, conds, train_conditions=conds, methods=["no_change"])
    table = tl.cell_eval_metrics(preds, sim, ceiling=True)
    assert set(table["method"]) == {"truth", "no_change", "ceiling"}
    assert set(table["condition"]) == set(conds)
    mean = table.groupby("method")[list(tl.CELL_EVAL_METRICS)].mean()
    assert mean.loc["truth", "pearson_delta"] > 0.9 > mean.loc["no_change", "pearson_delta"]
    assert mean.loc["truth", "mae"] < mean.loc["no_change", "mae"]
    assert (
        mean.loc["truth", "discrimination_score_l1"]
        > mean.loc["no_change", "discrimination_score_l1"]
    )
    assert mean.loc["truth", "overlap_at_N"] > mean.loc["no_change", "overlap_at_N"]
    assert 0 < table.attrs["ceiling"]["pearson_delta"] <= 1
