"""Perturbation prediction: setup validation, paired minibatches, prediction and reverse."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from scvi_scgpt import SCGPT, tl
from scvi_scgpt._constants import TOKEN_KEYS
from scvi_scgpt.data import TokenizerConfig
from scvi_scgpt.dataloaders import (
    COLLATORS,
    PERTURBATION_KEY,
    PairedControlCollator,
    pair_control_cells,
    perturbation_flags,
)
from scvi_scgpt.datasets import simulate_perturbseq

TINY = {"d_model": 16, "n_heads": 2, "d_hid": 16, "n_layers": 1, "attention_dropout": 0.0}


@pytest.fixture(scope="module")
def sim() -> ad.AnnData:
    return simulate_perturbseq(
        n_genes=30, n_regulators=6, n_doubles=4, n_control_cells=40, cells_per_perturbation=8
    )


@pytest.fixture(scope="module")
def model(sim):
    torch.manual_seed(0)
    adata = sim.copy()
    tl.perturbation_split(adata)
    SCGPT.setup_anndata(adata, perturbation_key="condition", labels_key="cell_type")
    m = SCGPT(adata, **TINY)
    m.train("perturbation", max_epochs=1, batch_size=32, accelerator="cpu")
    return m


def _untouched(adata: ad.AnnData) -> bool:
    return "_scvi_uuid" not in adata.uns and not any(c.startswith("_scvi") for c in adata.obs)


def _relabel(sim, last: str, n: int = 1) -> ad.AnnData:
    obs = sim.obs.copy()
    obs["condition"] = obs["condition"].astype(str)
    obs.iloc[-n:, obs.columns.get_loc("condition")] = last
    return ad.AnnData(sim.X.copy(), obs=obs, var=sim.var.copy())


@pytest.mark.parametrize(
    ("label", "n", "error", "match"),
    [
        ("NOPE+ctrl", 5, ValueError, "NOPE"),
        ("TF00++TF01", 5, ValueError, "Malformed"),
        ("+", 5, ValueError, "Malformed"),
        ("TF00+TF05", 1, ValueError, "1 cell"),
    ],
)
def test_setup_rejects_bad_conditions_and_leaves_adata_untouched(sim, label, n, error, match):
    adata = _relabel(sim, label, n)
    with pytest.raises(error, match=match):
        SCGPT.setup_anndata(adata, perturbation_key="condition")
    assert _untouched(adata)


def test_setup_rejects_missing_key_control_and_raw_counts(sim):
    adata = sim.copy()
    with pytest.raises(KeyError, match="perturbation_key"):
        SCGPT.setup_anndata(adata, perturbation_key="guide")
    with pytest.raises(ValueError, match="No control cells"):
        SCGPT.setup_anndata(adata, perturbation_key="condition", control_group="non-targeting")
    no_ctrl = adata[adata.obs["condition"] != "ctrl"].copy()
    with pytest.raises(ValueError, match="No control cells"):
        SCGPT.setup_anndata(no_ctrl, perturbation_key="condition")
    with pytest.raises(ValueError, match="raw counts"):
        SCGPT.setup_anndata(adata, layer="counts", perturbation_key="condition")
    assert _untouched(adata) and _untouched(no_ctrl)


def test_pairing_is_reproducible_and_keeps_the_cell_type():
    targets = np.array([0, 1, 1, 0, 2, 2, 2])
    controls = np.array([0, 0, 1, 2, 1, 2, 0])
    kw = {"target_labels": targets, "control_labels": controls}
    a = pair_control_cells(7, 7, np.random.default_rng(3), **kw)
    b = pair_control_cells(7, 7, np.random.default_rng(3), **kw)
    c = pair_control_cells(7, 7, np.random.default_rng(4), **kw)
    assert (a == b).all() and (controls[a] == targets).all()
    assert not (a == c).all() or len(set(a)) == 1
    free = pair_control_cells(9, 5, np.random.default_rng(0))
    assert len(free) == 9 and set(free) <= set(range(5))
    with pytest.raises(ValueError, match="No control cell"):
        pair_control_cells(
            1, 7, np.random.default_rng(0), target_labels=np.array([3]), control_labels=controls
        )


def test_flag_encoding_and_collated_minibatch():
    columns = np.array([0, 2, 3, 5])
    perturbed = [np.array([], dtype=int), np.array([2]), np.array([3, 5])]
    flags = perturbation_flags(columns, perturbed, np.array([0, 1, 2]))
    assert flags.tolist() == [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]]
    rng = np.random.default_rng(0)
    controls = sp.csr_matrix(rng.random((5, 8)).astype(np.float32))
    targets = rng.random((3, 8)).astype(np.float32)
    collator = COLLATORS["paired_control"].for_objectives(
        np.arange(8),
        TokenizerConfig(max_seq_len=4, n_bins=None),
        None,
        cls_id=9,
        pad_id=8,
        controls=controls,
        control_labels=None,
        perturbed_columns=[np.array([], dtype=int), np.array([6]), np.array([1, 7])],
    )
    assert isinstance(collator, PairedControlCollator)
    batch = {TOKEN_KEYS.X: torch.from_numpy(targets), PERTURBATION_KEY: torch.tensor([0, 1, 2])}
    torch.manual_seed(0)
    out = collator(batch)
    ids = out[TOKEN_KEYS.GENE_IDS].numpy()
    assert ids.shape == (3, 4) and {1, 6, 7} <= set(ids[0])  # perturbed genes always kept
    assert out[TOKEN_KEYS.PADDING_MASK].sum() == 0
    np.testing.assert_allclose(out[TOKEN_KEYS.TARGET_VALUES].numpy(), targets[:, ids[0]])
    rows = [
        np.flatnonzero(np.isclose(controls.toarray()[:, ids[0]], v).all(1))
        for v in out[TOKEN_KEYS.VALUES].numpy()
    ]
    assert all(len(r) == 1 for r in rows)  # each input is one control cell
    expected = np.stack([ids[0] < 0, ids[1] == 6, np.isin(ids[2], [1, 7])]).astype(int)
    assert (out[TOKEN_KEYS.PERT_FLAGS].numpy() == expected).all()
    torch.manual_seed(0)
    again = collator(batch)
    assert torch.equal(again[TOKEN_KEYS.VALUES], out[TOKEN_KEYS.VALUES])


def test_train_predict_and_write_uns(model):
    adata = model.adata
    assert hasattr(model.module, "pert_encoder") and model.module.config.pert_pad_id == 0
    assert model.training_task_["task"] == "perturbation"
    best = model.training_task_["best_epoch"]
    assert best["monitor"] == "perturbation_pearson_validation" and best["mode"] == "max"
    assert "perturbation_pearson_validation" in model.history_
    # training and validation cells are the "train" and held-out "val" conditions
    _, val, _ = model._collator_inputs("paired_control")["splitter"]["external_indexing"]
    assert len(val) and (val == np.flatnonzero(adata.obs["split"] == "val")).all()
    pred = model.predict_perturbation(["TF01+ctrl", ["TF02", "TF03"]], gene_chunk_size=7)
    assert list(pred.index) == ["TF01+ctrl", "TF02+TF03"]
    assert list(pred.columns) == list(adata.var_names) and np.isfinite(pred.to_numpy()).all()
    stored = adata.uns["scgpt_perturbation"]
    assert stored["predictions"].equals(pred) and stored["params"]["n_control_cells"] == 40
    assert stored["control_mean"].shape == (adata.n_vars,)
    cells = model.predict_perturbation("TF01+ctrl", n_control_cells=5, return_cells=True)
    assert cells.shape == (5, adata.n_vars) and set(cells.obs["perturbation"]) == {"TF01+ctrl"}
    np.testing.assert_allclose(
        cells.X.mean(0),
        model.predict_perturbation("TF01+ctrl", n_control_cells=5, key_added=None).to_numpy()[0],
        rtol=1e-4,
        atol=1e-5,
    )


def test_predict_rejects_bad_requests(model, sim):
    before = dict(model.adata.uns)
    for bad, match in (("NOPE+ctrl", "NOPE"), ("TF01++TF02", "Malformed"), ("+", "Malformed")):
        with pytest.raises(ValueError, match=match):
            model.predict_perturbation(bad, key_added="bad")
    assert "bad" not in model.adata.uns and set(model.adata.uns) == set(before)
    other = sim.copy()
    SCGPT.setup_anndata(other, perturbation_key="condition")
    narrow = SCGPT(other, vocab=[g for g in other.var_names if g != "TF03"], **TINY)
    narrow.module = type(model.module)(
        model.module.config.__class__(
            **{
                **model.module.config.to_dict(),
                "n_tokens": len(narrow.vocab_),
                "pad_id": narrow.vocab_.pad_id,
            }
        )
    )
    with pytest.raises(ValueError, match="cannot represent"):
        narrow.predict_perturbation("TF03+ctrl")
    plain = SCGPT(other, **TINY)
    with pytest.raises(ValueError, match="no perturbation-flag encoder"):
        plain.predict_perturbation("TF01+ctrl")


def test_reverse_perturbation_recovers_a_planted_perturbation(model):
    adata = model.adata
    train_genes = sorted(
        {
            g
            for c in adata.obs.loc[adata.obs["split"] == "train", "condition"].astype(str)
            for g in c.split("+")
            if g != "ctrl"
        }
    )
    n = len(train_genes)
    assert n >= 2
    pair = f"{train_genes[0]}+{train_genes[-1]}"
    planted = model.predict_perturbation(pair, key_added=None).iloc[0]
    ranking = model.reverse_perturbation(planted, top_k=5)
    assert ranking.index[0] == pair and ranking["distance"].iloc[0] < 1e-4
    assert list(ranking["rank"]) == [1, 2, 3, 4, 5]
    full = model.reverse_perturbation(planted, top_k=None)
    assert len(full) == n + n * (n - 1) // 2 and full["distance"].is_monotonic_increasing
    cached = model.predict_perturbation(list(full.index), key_added=None)
    again = model.reverse_perturbation(planted, predictions=cached, top_k=None)
    assert list(again.index) == list(full.index)
    np.testing.assert_allclose(again["distance"], full["distance"], rtol=1e-5)
    cells = adata[adata.obs["condition"] == "TF02+ctrl"]
    assert len(model.reverse_perturbation(cells, candidates=["TF02+ctrl", ["TF01"]])) == 2
    with pytest.raises(ValueError, match="values for"):
        model.reverse_perturbation(np.zeros(3))
    assert isinstance(full, pd.DataFrame)


def test_fine_tune_an_official_checkpoint_for_perturbation(official_dir):
    from scvi_scgpt.data import GeneVocab

    model_dir = official_dir / "zeroshot_model"
    genes = [t for t in GeneVocab.from_file(model_dir / "vocab.json").tokens if "<" not in t]
    adata = simulate_perturbseq(
        n_genes=30,
        n_regulators=6,
        n_doubles=2,
        n_control_cells=30,
        cells_per_perturbation=6,
        gene_names=genes[:30],
    )
    SCGPT.setup_anndata(adata, perturbation_key="condition")
    model = SCGPT.from_pretrained(model_dir, adata, accelerator="cpu")
    before = model.module.transformer_encoder.state_dict()
    assert not hasattr(model.module, "pert_encoder")
    model.train("perturbation", max_epochs=1, batch_size=32, train_size=0.8, accelerator="cpu")
    assert model.training_task_["regime"] == "fine_tune"
    assert model.training_task_["hyperparameters"]["lr"] == 1e-4  # the official value
    assert hasattr(model.module, "pert_encoder") and model.module.config.pert_pad_id == 0
    after = model.module.transformer_encoder.state_dict()
    key = "layers.0.linear1.weight"
    assert torch.allclose(before[key], after[key], atol=1e-2)  # loaded, then fine-tuned
    pred = model.predict_perturbation([[genes[1]]], key_added=None)
    assert list(pred.index) == [f"{genes[1]}+ctrl"] and np.isfinite(pred.to_numpy()).all()


def test_perturbed_gene_is_always_a_token_of_its_cells(sim):
    # official scGPT #298: with fewer tokens than expressed genes, the perturbed gene was
    # sometimes not sampled; here every cell carrying a perturbation flags each of its genes
    labels = sim.obs["condition"].astype(str).to_numpy()
    conditions = sorted(set(labels))
    code = {c: i for i, c in enumerate(conditions)}
    column = {g: i for i, g in enumerate(sim.var_names)}
    perturbed = [
        np.array([column[g] for g in c.split("+") if g != "ctrl"], dtype=int) for c in conditions
    ]
    expressed = np.diff(sim.X.tocsr().indptr)

    def paired_collator(max_seq_len: int):
        return COLLATORS["paired_control"].for_objectives(
            np.arange(sim.n_vars),
            TokenizerConfig(max_seq_len=max_seq_len, n_bins=None),
            None,
            cls_id=sim.n_vars + 1,
            pad_id=sim.n_vars,
            controls=sim.X[labels == "ctrl"],
            control_labels=None,
            perturbed_columns=perturbed,
        )

    collator = paired_collator(8)
    assert expressed.max() > 8  # fewer tokens than expressed genes
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    for _ in range(20):
        rows = rng.choice(sim.n_obs, size=3, replace=False)
        codes = np.array([code[labels[r]] for r in rows])
        batch = {
            TOKEN_KEYS.X: torch.from_numpy(sim.X[rows].toarray()),
            PERTURBATION_KEY: torch.from_numpy(codes),
        }
        out = collator(batch)
        ids = out[TOKEN_KEYS.GENE_IDS].numpy()
        flags = out[TOKEN_KEYS.PERT_FLAGS].numpy()
        assert ids.shape[1] == 8
        for i, c in enumerate(codes):
            assert sorted(ids[i][flags[i] == 1]) == sorted(perturbed[c])
    many = {TOKEN_KEYS.X: torch.zeros(9, sim.n_vars), PERTURBATION_KEY: torch.arange(1, 10)}
    tight = paired_collator(4)
    with pytest.raises(ValueError, match="smaller batch_size"):
        tight(many)


@pytest.fixture(scope="module")
def screen() -> ad.AnnData:
    """A screen with interactions and a hand-made split (train: ctrl, singles, 4 doubles)."""
    adata = simulate_perturbseq(
        n_genes=30,
        n_regulators=6,
        n_doubles=8,
        n_control_cells=40,
        cells_per_perturbation=8,
        n_interactions=3,
        seed=1,
    )
    doubles = sorted(c for c in adata.obs["condition"].unique() if "ctrl" not in c)
    role = dict.fromkeys(adata.obs["condition"].unique(), "train")
    role |= dict.fromkeys(doubles[4:6], "val") | dict.fromkeys(doubles[6:], "test")
    adata.obs["split"] = adata.obs["condition"].astype(str).map(role).astype("category")
    return adata


def _trained(adata, **train_kwargs):
    torch.manual_seed(0)
    adata = adata.copy()
    SCGPT.setup_anndata(adata, perturbation_key="condition")
    m = SCGPT(adata, **TINY)
    m.train("perturbation", max_epochs=1, batch_size=32, accelerator="cpu", **train_kwargs)
    return m


def test_additive_residual_prior_gate_and_save(screen, tmp_path):
    model = _trained(screen, combination="additive_residual")
    adata = model.adata
    state = model.perturbation_combination_
    assert state["mode"] == "additive_residual" and 0.0 <= state["gate"] <= 1.0
    singles = sorted(c.split("+")[0] for c in adata.obs["condition"].unique() if "+ctrl" in c)
    assert sorted(state["single_deltas"].index) == singles
    labels = adata.obs["condition"].astype(str).to_numpy()
    train = adata.obs["split"].to_numpy() == "train"
    x = adata.X.toarray()
    ctrl_train = x[(labels == "ctrl") & train].mean(0)
    np.testing.assert_allclose(
        state["single_deltas"].loc["TF01"],
        x[labels == "TF01+ctrl"].mean(0) - ctrl_train,
        atol=1e-5,
    )
    test_double = sorted(c for c in set(labels[adata.obs["split"] == "test"]))[0]
    a, b = test_double.split("+")
    prior = x[labels == "ctrl"].mean(0) + state["single_deltas"].loc[[a, b]].to_numpy().sum(0)
    state["gate"] = 0.0  # no residual: exactly the additive prior
    np.testing.assert_allclose(
        model.predict_perturbation(test_double, key_added=None).to_numpy()[0], prior, atol=1e-4
    )
    # the prior does not depend on the sampled control cells: the training control mean
    sampled = model.predict_perturbation(test_double, n_control_cells=20, key_added=None)
    np.testing.assert_allclose(
        sampled.to_numpy()[0],
        ctrl_train + state["single_deltas"].loc[[a, b]].to_numpy().sum(0),
        atol=1e-4,
    )
    state["gate"] = 1.0  # the network's own output on the prior input differs from it
    full = model.predict_perturbation(test_double, key_added=None).to_numpy()[0]
    assert np.abs(full - prior).max() > 1e-3
    state["gate"] = 0.5
    half = model.predict_perturbation(test_double, key_added=None).to_numpy()[0]
    np.testing.assert_allclose(half, (prior + full) / 2, atol=1e-4)
    cells = model.predict_perturbation(test_double, return_cells=True, key_added=None)
    np.testing.assert_allclose(cells.X.mean(0), half, atol=1e-4)
    # a single measured in training is its observed change (the prior of its doubles) ...
    ctrl = x[labels == "ctrl"].mean(0)
    single = model.predict_perturbation("TF01+ctrl", key_added=None).to_numpy()[0]
    np.testing.assert_allclose(single, ctrl + state["single_deltas"].loc["TF01"], atol=1e-4)
    per_cell = model.predict_perturbation("TF01", return_cells=True, key_added=None)
    np.testing.assert_allclose(per_cell.X.mean(0), single, atol=1e-4)
    # ... and an unmeasured single is the network's prediction, as in the official mode
    deltas = state["single_deltas"]
    state["single_deltas"] = deltas.drop("TF01")
    network = model.predict_perturbation("TF01+ctrl", key_added=None).to_numpy()[0]
    assert np.isfinite(network).all() and np.abs(network - single).max() > 1e-3
    state["single_deltas"] = deltas
    model.save(tmp_path / "m", save_anndata=True)
    loaded = SCGPT.load(tmp_path / "m", accelerator="cpu")
    assert loaded.perturbation_combination_["gate"] == 0.5
    for field in ("single_deltas", "control_mean"):
        pd.testing.assert_frame_equal(loaded.perturbation_combination_[field], state[field])


def test_additive_residual_rejects_bad_modes_and_missing_singles(screen):
    with pytest.raises(ValueError, match="Unknown combination mode"):
        _trained(screen, combination="multiplicative")
    adata = screen.copy()
    adata.obs["split"] = adata.obs["split"].astype(str)
    adata.obs.loc[adata.obs["condition"] == "TF01+ctrl", "split"] = "test"
    trained_with_tf01 = [
        c
        for c in adata.obs.loc[adata.obs["split"] == "train", "condition"].unique()
        if "TF01" in c.split("+")
    ]
    assert trained_with_tf01  # a training double needs TF01's single
    with pytest.raises(ValueError, match="'TF01'"):
        _trained(adata, combination="additive_residual")
    adata = screen.copy()
    SCGPT.setup_anndata(adata, perturbation_key="condition")
    with pytest.raises(ValueError, match="task='perturbation'"):
        SCGPT(adata, **TINY).train("gep", combination="additive_residual", max_epochs=1)


def test_wmse_weights_and_loss(screen):
    from scvi_scgpt.module._perturbation import perturbation_loss

    model = _trained(screen, objectives={"perturbation_loss": "wmse"})
    assert model.training_task_["objectives"]["perturbation_loss"] == "wmse"
    assert "perturbation_wmse_train" in model.history_
    weights = model._collator_inputs("paired_control")["collator"]["gene_weights"]
    adata = model.adata
    mapping = list(model.adata_manager.get_state_registry(PERTURBATION_KEY).categorical_mapping)
    labels = adata.obs["condition"].astype(str).to_numpy()
    x = adata.X.toarray()
    keep = adata.obs["split"].to_numpy() != "test"
    from scipy import stats

    t = stats.ttest_ind(
        x[(labels == "TF02+ctrl") & keep], x[(labels == "ctrl") & keep], equal_var=False
    ).statistic
    np.testing.assert_allclose(
        weights[mapping.index("TF02+ctrl")], np.abs(np.nan_to_num(t)), rtol=1e-4, atol=1e-5
    )
    assert (weights[mapping.index("ctrl")] == 1).all()
    pred = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    target = torch.tensor([[0.0, 2.0, 2.0], [1.0, 0.0, 1.0]])
    w = torch.tensor([[1.0, 1.0, 2.0], [3.0, 1.0, 0.0]])
    tensors = {
        TOKEN_KEYS.TARGET_VALUES: target,
        TOKEN_KEYS.PADDING_MASK: torch.zeros(2, 3, dtype=torch.bool),
        TOKEN_KEYS.PERT_FLAGS: torch.zeros(2, 3, dtype=torch.long),
        TOKEN_KEYS.DE_WEIGHTS: w,
    }
    out = perturbation_loss(tensors, {"expr": pred}, "wmse")
    expected = ((1 * 1 + 2 * 4) / 4 + (3 * 1) / 4) / 2
    assert out.loss.item() == pytest.approx(expected)
    assert perturbation_loss(tensors, {"expr": pred}, "mse").loss.item() == pytest.approx(6 / 6)
