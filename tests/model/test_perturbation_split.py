"""Held-out perturbation conditions never feed the training statistics (issue #30, 12-13, 15).

The additive prior (training singles' changes, training control mean), the WMSE weights, the
control pool and the residual gate read the registered split (``split_key``) or the cells
held out through ``datasplitter_kwargs={"external_indexing": ...}``.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import torch

from scvi_scgpt import SCGPT, tl
from scvi_scgpt.dataloaders import PERTURBATION_KEY, PairedControlCollator
from scvi_scgpt.datasets import simulate_perturbseq
from scvi_scgpt.model._perturbation_combination import de_weight_matrix, group_moments

TINY = {"d_model": 16, "n_heads": 2, "d_hid": 16, "n_layers": 1, "attention_dropout": 0.0}
TRAIN = {"max_epochs": 1, "batch_size": 32, "accelerator": "cpu"}


@pytest.fixture(scope="module")
def screen() -> ad.AnnData:
    """136 cells; seed 0 split: train singles TF01, TF03, TF04; test singles TF00, TF05."""
    adata = simulate_perturbseq(
        n_genes=30, n_regulators=6, n_doubles=6, n_control_cells=40, cells_per_perturbation=8
    )
    tl.perturbation_split(adata, key_added="heldout", seed=0)
    return adata


@pytest.fixture
def collator_inputs(monkeypatch) -> dict:
    """The arguments ``train`` builds the paired-control collator with."""
    seen: dict = {}
    original = PairedControlCollator.__init__

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        original(self, *args, **kwargs)

    monkeypatch.setattr(PairedControlCollator, "__init__", spy)
    return seen


def _labels(adata, key="condition") -> np.ndarray:
    return adata.obs[key].astype(str).to_numpy()


def _singles(conditions) -> list[str]:
    return sorted(c.split("+")[0] for c in conditions if c.endswith("+ctrl"))


def test_registered_split_key_feeds_every_training_statistic(screen, collator_inputs, tmp_path):
    adata = screen.copy()
    SCGPT.setup_anndata(adata, perturbation_key="condition", split_key="heldout")
    assert "split" not in adata.obs
    torch.manual_seed(0)
    model = SCGPT(adata, **TINY)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*leak.*")
        model.train("perturbation", combination="additive_residual", **TRAIN)
    labels, split = _labels(adata), _labels(adata, "heldout")
    train = split == "train"
    state = model.perturbation_combination_
    # held-out singles (TF00, TF02, TF05) feed neither the prior nor the control mean
    assert list(state["single_deltas"].index) == _singles(set(labels[train]))
    x = adata.X.toarray()
    np.testing.assert_allclose(
        state["control_mean"].iloc[0], x[(labels == "ctrl") & train].mean(0), atol=1e-5
    )
    assert collator_inputs["controls"].shape[0] == ((labels == "ctrl") & train).sum()
    # validation and training cells are the split's
    model_val = model._collator_inputs("paired_control")["splitter"]["external_indexing"][1]
    assert (model_val == np.flatnonzero(split == "val")).all()
    # a held-out single is the network's prediction, not its observed mean
    observed = x[labels == "TF00+ctrl"].mean(0)
    pred = model.predict_perturbation("TF00+ctrl", key_added=None).to_numpy()[0]
    assert np.abs(pred - observed).max() > 1e-3
    # reverse perturbation's default candidates: the training genes only
    ranking = model.reverse_perturbation(observed, top_k=None)
    genes = _singles(set(labels[train]))
    assert len(ranking) == len(genes) + len(genes) * (len(genes) - 1) // 2
    # the split is saved with the model
    model.save(tmp_path / "m", save_anndata=True)
    loaded = SCGPT.load(tmp_path / "m", accelerator="cpu")
    assert loaded.adata_manager.registry["setup_args"]["split_key"] == "heldout"


def test_wmse_weights_ignore_test_cells(screen, collator_inputs):
    adata = screen.copy()
    SCGPT.setup_anndata(adata, perturbation_key="condition", split_key="heldout")
    torch.manual_seed(0)
    model = SCGPT(adata, **TINY)
    model.train("perturbation", objectives={"perturbation_loss": "wmse"}, **TRAIN)
    weights = collator_inputs["gene_weights"]
    mapping = list(model.adata_manager.get_state_registry(PERTURBATION_KEY).categorical_mapping)
    # a test condition has no non-test cell: its weights are the uniform fallback
    assert (weights[mapping.index("TF00+ctrl")] == 1).all()
    assert not (weights[mapping.index("TF01+ctrl")] == 1).all()


def test_external_indexing_holds_cells_out_of_every_statistic(
    screen, collator_inputs, monkeypatch
):
    adata = ad.AnnData(screen.X.copy(), obs=screen.obs[["condition"]].copy(), var=screen.var)
    labels = _labels(adata)
    held = {"TF00+ctrl", "TF00+TF01", "TF00+TF02", "TF05+ctrl", "TF02+TF05", "TF03+TF05"}
    role = np.where(np.isin(labels, sorted(held)), "test", "train").astype(object)
    role[labels == "TF01+TF03"] = "val"
    ctrl = np.flatnonzero(labels == "ctrl")
    role[ctrl[:10]] = "test"  # some control cells are held out too
    indexing = [np.flatnonzero(role == p) for p in ("train", "val", "test")]
    SCGPT.setup_anndata(adata, perturbation_key="condition")
    torch.manual_seed(0)
    model = SCGPT(adata, **TINY)
    gate_inputs = []
    residual = SCGPT._additive_residual

    def spy(self, adata, rows, genes, **kwargs):
        gate_inputs.append(rows)
        return residual(self, adata, rows, genes, **kwargs)

    monkeypatch.setattr(SCGPT, "_additive_residual", spy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.train(
            "perturbation",
            combination="additive_residual",
            datasplitter_kwargs={"external_indexing": indexing},
            **TRAIN,
        )
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "leak" in m or "No validation doubles" in m]
    state = model.perturbation_combination_
    train = role == "train"
    assert list(state["single_deltas"].index) == _singles(set(labels[train]))
    x = adata.X.toarray()
    np.testing.assert_allclose(
        state["control_mean"].iloc[0], x[(labels == "ctrl") & train].mean(0), atol=1e-5
    )
    assert collator_inputs["controls"].shape[0] == ((labels == "ctrl") & train).sum()
    # the residual gate is fitted on the validation double from training control cells
    assert gate_inputs and all(set(r) <= set(np.flatnonzero(train)) for r in gate_inputs)


def test_no_held_out_split_warns_that_evaluation_would_leak(screen):
    adata = ad.AnnData(screen.X.copy(), obs=screen.obs[["condition"]].copy(), var=screen.var)
    SCGPT.setup_anndata(adata, perturbation_key="condition")
    torch.manual_seed(0)
    model = SCGPT(adata, **TINY)
    with pytest.warns(UserWarning, match="leak"):
        model.train("perturbation", **TRAIN)


def test_setup_rejects_a_bad_split_key(screen):
    adata = screen.copy()
    with pytest.raises(KeyError, match="split_key"):
        SCGPT.setup_anndata(adata, perturbation_key="condition", split_key="nope")
    adata.obs["bad"] = np.where(_labels(adata) == "ctrl", "train", "holdout")
    with pytest.raises(ValueError, match="holdout"):
        SCGPT.setup_anndata(adata, perturbation_key="condition", split_key="bad")
    with pytest.raises(ValueError, match="perturbation_key"):
        SCGPT.setup_anndata(adata, split_key="heldout")
    assert "_scvi_uuid" not in adata.uns


def test_measured_single_keeps_nan_for_genes_outside_the_vocabulary(screen):
    adata = screen.copy()
    adata.obs["split"] = adata.obs.pop("heldout")  # read without split_key (compatibility)
    SCGPT.setup_anndata(adata, perturbation_key="condition")
    torch.manual_seed(0)
    model = SCGPT(adata, vocab=[g for g in adata.var_names if g != "G003"], **TINY)
    model.train("perturbation", combination="additive_residual", **TRAIN)
    assert "TF01" in model.perturbation_combination_["single_deltas"].index
    pred = model.predict_perturbation(["TF01+ctrl", "TF01+TF03"], key_added=None)
    assert pred["G003"].isna().all()  # the double already was NaN there
    assert np.isfinite(pred.drop(columns="G003").to_numpy()).all()
    cells = model.predict_perturbation("TF01+ctrl", return_cells=True, key_added=None)
    column = list(adata.var_names).index("G003")
    assert np.isnan(cells.X[:, column]).all()
    assert np.isfinite(np.delete(cells.X, column, axis=1)).all()


def test_infinite_welch_t_gets_the_largest_finite_weight():
    # gene 0: constant in both groups, different means (|t| infinite); gene 1: no change
    # and no variance (undefined); genes 2, 3: finite t
    ctrl = np.array([[0.0, 1.0, 1.0, 2.0], [0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 3.0, 2.5]])
    pert = np.array([[5.0, 1.0, 4.0, 2.0], [5.0, 1.0, 5.0, 3.1], [5.0, 1.0, 6.0, 2.4]])
    shifted = ctrl + np.array([7.0, 0.0, 0.0, 0.0])  # infinite |t| on gene 0, 0 elsewhere
    counts, mean, var = group_moments(np.vstack([ctrl, pert, shifted]), np.repeat([0, 1, 2], 3), 3)
    weights = de_weight_matrix(counts, mean, var, control_code=0)
    se = np.sqrt(pert.var(0, ddof=1) / 3 + ctrl.var(0, ddof=1) / 3)
    finite = np.abs(pert.mean(0)[2:] - ctrl.mean(0)[2:]) / se[2:]
    np.testing.assert_allclose(weights[1], [finite.max(), 0.0, *finite], rtol=1e-5)
    # no finite non-zero |t| beside it: the infinite gene still counts most
    np.testing.assert_allclose(weights[2], [1.0, 0.0, 0.0, 0.0])
    assert (weights[0] == 1).all()
    # every |t| infinite or undefined (constant cells): the changed genes weigh 1 each
    flat = np.array([[0.0, 1.0, 2.0, 3.0]] * 3)
    changed = flat + np.array([5.0, 0.0, 0.0, -1.0])
    counts, mean, var = group_moments(np.vstack([flat, changed]), np.repeat([0, 1], 3), 2)
    np.testing.assert_allclose(de_weight_matrix(counts, mean, var, 0)[1], [1.0, 0.0, 0.0, 1.0])


def test_after_training_with_external_indexing_candidates_are_its_training_genes(screen):
    adata = ad.AnnData(screen.X.copy(), obs=screen.obs[["condition"]].copy(), var=screen.var)
    labels = _labels(adata)
    held = {"TF00+ctrl", "TF00+TF01", "TF00+TF02", "TF05+ctrl", "TF02+TF05", "TF03+TF05"}
    role = np.where(np.isin(labels, sorted(held)), "test", "train").astype(object)
    role[labels == "TF01+TF03"] = "val"
    indexing = [np.flatnonzero(role == p) for p in ("train", "val", "test")]
    SCGPT.setup_anndata(adata, perturbation_key="condition")  # no split column at all
    torch.manual_seed(0)
    model = SCGPT(adata, **TINY)
    model.train("perturbation", datasplitter_kwargs={"external_indexing": indexing}, **TRAIN)
    observed = adata.X[labels == "TF00+ctrl"].toarray().mean(0)
    ranking = model.reverse_perturbation(observed, top_k=None)
    genes = sorted({g for c in set(labels[role == "train"]) for g in c.split("+")} - {"ctrl"})
    assert "TF00" not in genes and "TF05" not in genes
    expected = [f"{g}+ctrl" for g in genes]
    expected += [f"{a}+{b}" for i, a in enumerate(genes) for b in genes[i + 1 :]]
    assert sorted(ranking.index) == sorted(expected)
    # the training split is what the model keeps, whatever obs says later
    adata.obs["split"] = "train"
    assert sorted(model.reverse_perturbation(observed, top_k=None).index) == sorted(expected)


def test_the_split_source_is_logged_once_per_training(screen, caplog):
    adata = screen.copy()
    adata.obs["split"] = adata.obs.pop("heldout")  # read without split_key (compatibility)
    SCGPT.setup_anndata(adata, perturbation_key="condition")
    torch.manual_seed(0)
    model = SCGPT(adata, **TINY)
    with caplog.at_level("INFO", logger="scvi_scgpt.model._perturbation_setup"):
        model.train("perturbation", combination="additive_residual", **TRAIN)
    lines = [r for r in caplog.records if "No split_key registered" in r.getMessage()]
    assert len(lines) == 1
