"""The count decoder and scvi-tools' generative API: normalised expression, DE, predictive."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scvi
import torch
from sklearn.metrics import roc_auc_score

from scvi_scgpt import SCGPT
from tests._builders import make_structured_counts

QUIET = {"enable_progress_bar": False, "enable_checkpointing": False}
TINY = {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_hid": 32, "attention_dropout": 0.0}
N_TYPES, N_GENES = 3, 60


@pytest.fixture(scope="module")
def counts_model():
    """A tiny model trained with the count objective on counts with planted type genes."""
    scvi.settings.seed = 0
    adata = make_structured_counts(300, N_GENES, n_types=N_TYPES, seed=3)
    SCGPT.setup_anndata(adata, batch_key="batch")
    model = SCGPT(adata, **TINY)
    model.train(
        "gep",
        objectives={"count": True, "gep": False, "gepc": False},
        max_epochs=25,
        lr=3e-3,
        **QUIET,
    )
    return model, adata


def test_count_objective_builds_a_batch_conditioned_decoder(counts_model):
    model, adata = counts_model
    arch = model.architecture
    assert arch.count_decoder and arch.n_count_genes == N_GENES and arch.count_n_batch == 2
    assert model.count_genes == list(adata.var_names)
    # each cell's decoded profile is nearest to its own type's mean observed profile
    scale = model.get_normalized_expression(adata, return_numpy=True)
    x = np.asarray(adata.X.todense())
    x = x / x.sum(1, keepdims=True)
    types = adata.obs["cell_type"].cat.codes.to_numpy()
    means = np.stack([x[types == t].mean(0) for t in range(N_TYPES)])
    nearest = ((scale[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert (nearest == types).mean() > 0.9


def test_normalized_expression_follows_scvi_semantics(counts_model):
    model, adata = counts_model
    frame = model.get_normalized_expression(adata)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.index) == list(adata.obs_names) and frame.shape == (adata.n_obs, N_GENES)
    np.testing.assert_allclose(frame.to_numpy().sum(1), 1.0, rtol=1e-4)
    latent = model.get_normalized_expression(adata, library_size="latent", return_numpy=True)
    np.testing.assert_allclose(latent.sum(1), np.asarray(adata.X.sum(1)).ravel(), rtol=1e-3)
    genes = list(adata.var_names[:5])
    subset = model.get_normalized_expression(adata, indices=[0, 2], gene_list=genes)
    assert list(subset.columns) == genes and subset.shape == (2, 5)
    np.testing.assert_allclose(subset.to_numpy(), frame.iloc[[0, 2]][genes].to_numpy(), rtol=1e-5)
    # decoded as another batch: the decoder's batch term changes, the cells' own do not
    as_b0 = model.get_normalized_expression(adata, transform_batch="b0", return_numpy=True)
    own_b0 = (adata.obs["batch"] == "b0").to_numpy()
    np.testing.assert_allclose(as_b0[own_b0], frame.to_numpy()[own_b0], rtol=1e-4, atol=1e-7)
    assert not np.allclose(as_b0[~own_b0], frame.to_numpy()[~own_b0])
    overall = model.get_normalized_expression(adata, n_samples_overall=50, return_numpy=True)
    assert overall.shape == (50, N_GENES)


def test_likelihood_parameters_are_the_decoded_distribution(counts_model):
    model, adata = counts_model
    params = model.get_likelihood_parameters(adata, indices=[0, 1, 2])
    assert set(params) == {"mean", "dispersions"}
    latent = model.get_normalized_expression(
        adata, indices=[0, 1, 2], library_size="latent", return_numpy=True
    )
    np.testing.assert_allclose(params["mean"], latent, rtol=1e-5)
    assert np.all(params["dispersions"] > 0)


def test_differential_expression_ranks_planted_genes_first(counts_model):
    model, adata = counts_model
    de = model.differential_expression(groupby="cell_type", group1=["type0"], silent=True)
    for column in ("proba_de", "bayes_factor", "lfc_mean", "scale1", "raw_mean1"):
        assert column in de.columns
    block = N_GENES // (2 * N_TYPES)
    planted = np.isin(de.index, adata.var_names[:block])
    assert roc_auc_score(planted, de["lfc_mean"].to_numpy()) >= 0.9


def test_posterior_predictive_sample_and_scvi_criticism(counts_model):
    model, adata = counts_model
    samples = model.posterior_predictive_sample(adata, n_samples=4)
    assert samples.shape == (adata.n_obs, N_GENES, 4)
    dense = samples.todense()
    assert np.all(dense >= 0) and np.array_equal(dense, np.round(dense))
    # the draws are at each cell's observed library size (mean over draws and cells)
    library = np.asarray(adata.X.sum(1)).ravel()
    ratio = dense.sum(1).mean(1) / library
    assert 0.8 < float(np.median(ratio)) < 1.25
    one = model.posterior_predictive_sample(adata, indices=[1, 4], gene_list=adata.var_names[:3])
    assert one.shape == (2, 3)

    from scvi.criticism import PosteriorPredictiveCheck

    # scvi-tools 1.4's integer check of the raw counts fails on a sparse float matrix
    dense_adata = adata.copy()
    dense_adata.X = dense_adata.X.toarray()
    scvi.model.SCVI.setup_anndata(dense_adata, batch_key="batch")
    scvi_model = scvi.model.SCVI(dense_adata, n_latent=4)
    scvi_model.train(max_epochs=1, enable_progress_bar=False)
    # each model samples its own AnnData (the same cells); the check reads dense_adata's counts
    ppc = PosteriorPredictiveCheck(dense_adata, {"scVI": scvi_model, "SCGPT": model}, n_samples=2)
    ppc.coefficient_of_variation()
    cv = ppc.metrics["cv_gene"]
    assert {"scVI", "SCGPT"} <= set(cv.columns) and cv["SCGPT"].notna().all()


def test_count_decoder_round_trips_through_save_and_load(counts_model, tmp_path):
    model, adata = counts_model
    model.save(tmp_path / "m")
    loaded = SCGPT.load(tmp_path / "m", adata)
    np.testing.assert_array_equal(
        loaded.get_normalized_expression(adata, return_numpy=True),
        model.get_normalized_expression(adata, return_numpy=True),
    )
    assert torch.equal(loaded.module.count_decoder.gene_ids, model.module.count_decoder.gene_ids)


def test_official_format_leaves_the_count_decoder_out(counts_model, tmp_path):
    model, adata = counts_model
    model.save_pretrained(tmp_path / "official")
    state = torch.load(tmp_path / "official" / "best_model.pt", weights_only=True)
    assert not any(k.startswith("count_decoder.") for k in state)
    reloaded = SCGPT.from_pretrained(tmp_path / "official", adata)
    assert not reloaded.architecture.count_decoder
    with pytest.raises(ValueError, match="no count decoder.*objectives=\\{'count': True\\}"):
        reloaded.get_normalized_expression(adata)
    with pytest.raises(ValueError, match="no count decoder"):
        reloaded.differential_expression(groupby="cell_type", group1=["type0"])


def test_count_objective_refuses_normalised_values():
    adata = make_structured_counts(60, 30, seed=1)
    adata.X = adata.X.multiply(1.0 / adata.X.sum(1)).tocsr() * 100.0
    SCGPT.setup_anndata(adata)
    model = SCGPT(adata, **TINY)
    with pytest.raises(ValueError, match="not integer.*layer='counts'"):
        model.train("gep", objectives={"count": True}, max_epochs=1)
    assert not model.architecture.count_decoder


def test_count_objective_with_generative_pretraining():
    scvi.settings.seed = 0
    adata = make_structured_counts(80, 30, seed=2)
    SCGPT.setup_anndata(adata)
    model = SCGPT(adata, **TINY)
    model.train(
        "pretrain",
        objectives={"count": True},
        max_epochs=2,
        **QUIET,
    )
    assert np.isfinite(model.history_["count_train"].iloc[:, 0].to_numpy(dtype=float)).all()
    assert model.get_normalized_expression(adata, return_numpy=True).shape == (80, 30)


def test_from_scratch_default_falls_back_without_raw_counts():
    adata = make_structured_counts(60, 30, seed=1)
    adata.X = adata.X.multiply(1.0 / adata.X.sum(1)).tocsr() * 100.0
    SCGPT.setup_anndata(adata, batch_key="batch")
    model = SCGPT(adata, **TINY)
    with pytest.warns(UserWarning, match="'count' is switched off because the registered"):
        model.train(
            "integration",
            max_epochs=1,
            n_top_genes=None,
            **QUIET,
        )
    assert not model.architecture.count_decoder
    used = model.training_task_["objectives"]
    assert used["gep"] and used["gepc"] and not used["count"]


def test_from_scratch_presets_train_the_count_objective():
    scvi.settings.seed = 0
    adata = make_structured_counts(80, 30, seed=4)
    SCGPT.setup_anndata(adata, batch_key="batch")
    model = SCGPT(adata, **TINY)
    model.train(
        "integration",
        max_epochs=1,
        n_top_genes=None,
        **QUIET,
    )
    used = model.training_task_["objectives"]
    assert used["count"] and not used["gep"] and not used["gepc"]
    assert model.architecture.count_decoder
    assert model.tokenizer_config.include_zero_genes is False


def test_zero_inflated_decoder_with_dispersion_per_batch():
    scvi.settings.seed = 0
    adata = make_structured_counts(80, 30, seed=5)
    SCGPT.setup_anndata(adata, batch_key="batch")
    model = SCGPT(adata, count_likelihood="zinb", count_dispersion="gene-batch", **TINY)
    model.train(
        "gep",
        objectives={"count": True, "gep": False, "gepc": False},
        max_epochs=2,
        **QUIET,
    )
    assert model.module.count_decoder.log_theta.shape == (2, 30)
    params = model.get_likelihood_parameters(adata)
    assert set(params) == {"mean", "dispersions", "dropout"}
    # the two batches' cells get their own dispersions
    codes = adata.obs["batch"].cat.codes.to_numpy()
    first = [np.flatnonzero(codes == b)[0] for b in (0, 1)]
    assert not np.allclose(params["dispersions"][first[0]], params["dispersions"][first[1]])
    assert model.posterior_predictive_sample(adata, n_samples=2).shape == (80, 30, 2)
