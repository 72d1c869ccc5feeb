from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scvi

from scvi_scgpt import SCGPT
from tests._builders import make_structured_counts

TINY = {"d_model": 32, "n_heads": 2, "d_hid": 32, "n_layers": 2, "dropout": 0.0}
QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


@pytest.fixture(scope="module")
def reference_model():
    scvi.settings.seed = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = make_structured_counts(200, n_batches=2, seed=0)
        SCGPT.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
        model = SCGPT(adata, max_seq_len=128, **TINY)
        # a labelled reference (as in scArches / scANVI mapping): with the classifier the
        # transfer accuracy was 0.56-0.85 over seeds 0-5 on both supported stacks
        model.train(
            "integration",
            max_epochs=6,
            n_top_genes=60,
            batch_size=32,
            lr=1e-3,
            objectives={"cls": True},
            **QUIET,
        )
    return model


def _query():
    query = make_structured_counts(90, n_batches=3, seed=5)
    query = query[query.obs["batch"] == "b2"].copy()
    query.obs["batch"] = pd.Categorical(["new_site"] * query.n_obs)
    return query[:, 5:].copy()  # some reference genes were not measured


def test_load_query_data_extends_batches(reference_model):
    query = _query()
    truth = query.obs["cell_type"].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = SCGPT.load_query_data(query, reference_model)
    assert qmodel.architecture.n_batch == 3
    bn_new = qmodel.module.dsbn.bns[2]
    assert bn_new.running_mean.abs().sum() > 0  # estimated from query cells
    # reference cells embed exactly as with the reference model
    ref_adata = reference_model.adata
    np.testing.assert_allclose(
        qmodel.get_latent_representation(ref_adata.copy()),
        reference_model.get_latent_representation(),
        atol=1e-6,
    )
    emb = qmodel.get_latent_representation()
    assert emb.shape == (query.n_obs, 32) and np.isfinite(emb).all()
    # the query's own labels are only kept to score the transfer
    qmodel.transfer_labels(query, reference=ref_adata, labels_key="cell_type", n_neighbors=10)
    assert set(query.obs) >= {"scgpt_transferred", "scgpt_transferred_confidence"}
    accuracy = (query.obs["scgpt_transferred"].astype(str) == truth.astype(str)).mean()
    assert accuracy > 0.5, accuracy  # 3 balanced types: chance is 1/3 (measured 0.79/0.85)
    assert query.obs["scgpt_transferred_confidence"].between(0, 1).all()


def test_reference_cells_as_a_new_batch_embed_as_themselves(reference_model):
    # training ends with each batch's DSBN statistics recomputed from its cells, so a new
    # batch estimated from the same cells normalises them as the reference batch did (stale
    # momentum averages put such a batch 0.3-0.4 away from its own cells, at a spread of 0.01)
    ref_adata = reference_model.adata
    cells = ref_adata[ref_adata.obs["batch"] == "b0"].copy()
    cells.obs["batch"] = pd.Categorical(["new_site"] * cells.n_obs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = SCGPT.load_query_data(cells, reference_model)
    as_new_batch = qmodel.get_latent_representation(cells)
    as_reference = reference_model.get_latent_representation(ref_adata[cells.obs_names].copy())
    offset = np.linalg.norm(as_new_batch.mean(0) - as_reference.mean(0))
    spread = np.linalg.norm(as_reference - as_reference.mean(0), axis=1).mean()
    assert offset < 0.5 * spread, (offset, spread)


def test_transfer_labels_errors(reference_model):
    with pytest.raises(KeyError, match="labels_key"):
        reference_model.transfer_labels(reference_model.adata, labels_key="nope")


def test_refresh_batch_statistics_can_be_turned_off():
    import torch

    from scvi_scgpt.model._batchnorm import refresh_domain_statistics

    means = {}
    for refresh in (False, True):
        scvi.settings.seed = 0
        adata = make_structured_counts(120, n_batches=2, seed=1)
        SCGPT.setup_anndata(adata, batch_key="batch")
        model = SCGPT(adata, max_seq_len=128, **TINY)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.train("integration", max_epochs=1, n_top_genes=60, batch_size=32, lr=1e-3,
                        train_size=1.0, refresh_batch_statistics=refresh, **QUIET)  # fmt: skip
        means[refresh] = model.module.dsbn.bns[0].running_mean.clone()
        if not refresh:  # the momentum averages were kept; refreshing now gives train's result
            refresh_domain_statistics(model, [0, 1], 32)
            means["by_hand"] = model.module.dsbn.bns[0].running_mean.clone()
    assert not torch.allclose(means[False], means[True])
    torch.testing.assert_close(means["by_hand"], means[True])
