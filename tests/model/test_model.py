from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from scvi_scgpt import SCGPT, GeneVocab
from tests._builders import make_counts

TINY = {"d_model": 16, "n_heads": 2, "d_hid": 32, "n_layers": 2, "dropout": 0.0}


def _pretrained(official_dir, adata, **kwargs):
    SCGPT.setup_anndata(adata, **kwargs)
    return SCGPT.from_pretrained(official_dir / "zeroshot_model", adata, max_seq_len=512)


def test_parity_with_official_embed_data(official_dir, official_cells):
    model = _pretrained(official_dir, official_cells)
    ours = model.get_latent_representation(batch_size=16)
    official = np.load(official_dir / "zeroshot_official_embeddings.npy")
    cosine = (ours * official).sum(1) / (
        np.linalg.norm(ours, axis=1) * np.linalg.norm(official, axis=1)
    )
    assert cosine.min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_embeddings_independent_of_batch_order_and_neighbours(official_dir):
    # integer counts (ties) and max_seq_len below the expressed genes: all randomness in play
    adata = make_counts(
        60,
        GeneVocab.from_file(official_dir / "zeroshot_model/vocab.json").tokens[:300],
        density=0.5,
    )
    SCGPT.setup_anndata(adata)
    model = SCGPT.from_pretrained(official_dir / "zeroshot_model", adata, max_seq_len=40)
    full = model.get_latent_representation(batch_size=64)
    perm = np.random.default_rng(0).permutation(60)
    shuffled = model.get_latent_representation(indices=perm, batch_size=7, chunk_size=11)
    np.testing.assert_allclose(shuffled, full[perm], atol=1e-6)
    subset = adata[perm[:9]].copy()
    SCGPT.setup_anndata(subset)
    np.testing.assert_allclose(
        model.get_latent_representation(subset, batch_size=3), full[perm[:9]], atol=1e-6
    )
    again = model.get_latent_representation(batch_size=13)
    np.testing.assert_allclose(again, full, atol=1e-6)
    reseeded = SCGPT.from_pretrained(
        official_dir / "zeroshot_model", adata, max_seq_len=40, seed=1
    ).get_latent_representation()
    assert np.abs(reseeded - full).max() > 1e-3


def test_embed_writes_only_obsm(official_dir, official_cells):
    model = _pretrained(official_dir, official_cells)
    x_before = official_cells.X.copy()
    obs_cols, uns_keys = set(official_cells.obs), set(official_cells.uns)
    model.embed(official_cells, key_added="X_test")
    assert official_cells.obsm["X_test"].shape == (48, 64)
    assert official_cells.obsm["X_test"].dtype == np.float32
    assert set(official_cells.obs) == obs_cols and set(official_cells.uns) == uns_keys
    assert (official_cells.X != x_before).nnz == 0


def test_other_anndata_with_other_genes(official_dir, official_cells):
    model = _pretrained(official_dir, official_cells)
    ref = model.get_latent_representation()
    cols = np.random.default_rng(0).permutation(official_cells.n_vars)[:300]
    other = official_cells[:, cols].copy()
    SCGPT.setup_anndata(other)
    sub = model.get_latent_representation(other)
    assert sub.shape == (48, 64)
    # without setup_anndata the model's setup is transferred
    other2 = official_cells[:, cols].copy()
    np.testing.assert_allclose(model.get_latent_representation(other2), sub, atol=1e-6)
    # dropping genes changes the embedding (genes really are read by name)
    assert np.abs(sub - ref).max() > 1e-3


def test_gene_symbols_key_and_ensembl_var_names(official_dir, official_cells):
    model = _pretrained(official_dir, official_cells)
    ref = model.get_latent_representation()
    renamed = official_cells.copy()
    renamed.var["symbol"] = renamed.var_names
    renamed.var_names = [f"g{i}" for i in range(renamed.n_vars)]
    SCGPT.setup_anndata(renamed, gene_symbols_key="symbol")
    np.testing.assert_allclose(model.get_latent_representation(renamed), ref, atol=1e-6)
    cov = model.gene_coverage(renamed)
    assert cov.n_matched == 360 and "matched 360 / 400" in cov.summary()

    from scvi_scgpt.data import ensembl_to_symbol

    to_id = {s: g for g, s in ensembl_to_symbol().items()}
    ens = official_cells.copy()
    ens.var_names = [to_id.get(g, g) + ".5" if g in to_id else g for g in ens.var_names]
    SCGPT.setup_anndata(ens)
    cov = model.gene_coverage(ens)
    assert cov.n_via_ensembl > 300


def test_save_load_roundtrip_exact(tmp_path, official_dir, official_cells):
    model = _pretrained(official_dir, official_cells)
    emb = model.get_latent_representation()
    model.save(tmp_path / "saved", save_anndata=True)
    with pytest.raises(FileExistsError):
        model.save(tmp_path / "saved")
    loaded = SCGPT.load(tmp_path / "saved", official_cells.copy())
    np.testing.assert_array_equal(loaded.get_latent_representation(), emb)
    assert loaded.vocab_ == model.vocab_ and loaded.tokenizer_config == model.tokenizer_config
    assert loaded.architecture == model.architecture and loaded.is_trained_
    for key, value in model.module.state_dict().items():
        torch.testing.assert_close(loaded.module.state_dict()[key], value, rtol=0, atol=0)
    assert loaded.checkpoint_audit_.loaded == model.checkpoint_audit_.loaded
    from_h5ad = SCGPT.load(tmp_path / "saved")
    np.testing.assert_array_equal(from_h5ad.get_latent_representation(), emb)
    assert (tmp_path / "saved" / "model.safetensors").is_file()  # the default format
    assert not (tmp_path / "saved" / "model.pt").exists()


def test_save_weights_format_pt_and_overwrite(tmp_path, official_dir, official_cells):
    model = _pretrained(official_dir, official_cells)
    emb = model.get_latent_representation()
    model.save(tmp_path / "saved", weights_format="pt")
    assert (tmp_path / "saved" / "model.pt").is_file()
    loaded = SCGPT.load(tmp_path / "saved", official_cells.copy())
    np.testing.assert_array_equal(loaded.get_latent_representation(), emb)
    model.save(tmp_path / "saved", overwrite=True)  # one weights file, never two
    names = {p.name for p in (tmp_path / "saved").iterdir()}
    assert "model.safetensors" in names and "model.pt" not in names
    with pytest.raises(ValueError, match="weights_format"):
        model.save(tmp_path / "other", weights_format="pickle")


def test_save_pretrained_is_official_format(tmp_path, official_dir, official_cells):
    model = _pretrained(official_dir, official_cells)
    emb = model.get_latent_representation()
    model.save_pretrained(tmp_path / "official")
    files = {p.name for p in (tmp_path / "official").iterdir()}
    assert files == {"args.json", "vocab.json", "best_model.pt"}
    original = torch.load(official_dir / "zeroshot_model/best_model.pt", weights_only=True)
    written = torch.load(tmp_path / "official/best_model.pt", weights_only=True)
    assert set(written) == set(original)
    again = SCGPT.from_pretrained(tmp_path / "official", official_cells, max_seq_len=512)
    np.testing.assert_array_equal(again.get_latent_representation(), emb)


def test_new_model_with_own_vocab(counts_adata):
    SCGPT.setup_anndata(counts_adata)
    model = SCGPT(counts_adata, max_seq_len=50, **TINY)
    assert len(model.vocab_) == counts_adata.n_vars + 3
    emb = model.get_latent_representation()
    assert emb.shape == (counts_adata.n_obs, 16) and np.isfinite(emb).all()
    assert "2 layers" in model._model_summary_string
    with pytest.raises(NotImplementedError):
        model.get_latent_representation(return_dist=True)


def test_batch_aware_model_uses_batches():
    adata = make_counts(30, n_batches=3)
    SCGPT.setup_anndata(adata, batch_key="batch")
    model = SCGPT(adata, max_seq_len=60, domain_spec_batchnorm=True, use_batch_labels=True, **TINY)
    assert model.architecture.n_batch == 3
    for bn in model.module.dsbn.bns:
        bn.running_mean.uniform_(-1, 1)
    emb = model.get_latent_representation()
    relabelled = adata.copy()
    relabelled.obs["batch"] = pd.Categorical(["b0"] * 30, categories=["b0", "b1", "b2"])
    SCGPT.setup_anndata(relabelled, batch_key="batch")
    other = model.get_latent_representation(relabelled)
    changed = np.abs(other - emb).max(1) > 1e-4
    assert changed[adata.obs["batch"].to_numpy() != "b0"].all()
    assert not changed[adata.obs["batch"].to_numpy() == "b0"].any()
    unknown = adata.copy()
    unknown.obs["batch"] = pd.Categorical(["zz"] * 30)
    SCGPT.setup_anndata(unknown, batch_key="batch")
    with pytest.raises(ValueError, match="trained on batches"):
        model.get_latent_representation(unknown)


def test_bf16_precision_runs_on_cpu(official_dir, official_cells):
    model = _pretrained(official_dir, official_cells)
    emb32 = model.get_latent_representation()
    emb16 = model.get_latent_representation(precision="bf16")
    cos = (emb32 * emb16).sum(1)
    assert cos.min() > 0.98
    with pytest.raises(ValueError, match="precision"):
        model.get_latent_representation(precision="8")


# ------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("value", "match"), [(np.nan, "NaN"), (-3.0, "negative"), (np.inf, "infinite")]
)
def test_bad_values_rejected_at_setup(counts_adata, value, match):
    x = counts_adata.X.tolil()
    x[3, 5] = value
    counts_adata.X = sp.csr_matrix(x)
    with pytest.raises(ValueError, match=match):
        SCGPT.setup_anndata(counts_adata)
    dense = counts_adata.copy()
    dense.X = dense.X.toarray()
    with pytest.raises(ValueError, match=match):
        SCGPT.setup_anndata(dense)


def test_empty_cells_rejected_with_names(official_dir, official_cells):
    model = _pretrained(official_dir, official_cells)
    bad = official_cells.copy()
    x = bad.X.tolil()
    x[7, :] = 0
    bad.X = sp.csr_matrix(x)
    SCGPT.setup_anndata(bad)
    with pytest.raises(ValueError, match=f"1 cells have no expressed gene.*{bad.obs_names[7]}"):
        model.get_latent_representation(bad)


def test_duplicate_and_unknown_genes(official_dir, official_cells):
    model = _pretrained(official_dir, official_cells)
    dup = official_cells.copy()
    names = list(dup.var_names)
    names[1] = names[0]
    dup.var_names = names
    SCGPT.setup_anndata(dup)
    with pytest.raises(ValueError, match="duplicated"):
        model.get_latent_representation(dup)
    alien = official_cells.copy()
    alien.var_names = [f"NOPE{i}" for i in range(alien.n_vars)]
    SCGPT.setup_anndata(alien)
    with pytest.raises(ValueError, match="No gene"):
        model.get_latent_representation(alien)


def test_missing_keys_and_empty_data(counts_adata):
    with pytest.raises(KeyError, match="gene_symbols_key"):
        SCGPT.setup_anndata(counts_adata, gene_symbols_key="nope")
    with pytest.raises(KeyError, match="layer"):
        SCGPT.setup_anndata(counts_adata, layer="counts")
    with pytest.raises(ValueError, match="empty"):
        SCGPT.setup_anndata(counts_adata[:0].copy())


def test_user_anndata_unchanged_when_rejected(official_dir, official_cells):
    model = _pretrained(official_dir, official_cells)
    bad = official_cells.copy()
    x = bad.X.tolil()
    x[0, :] = 0
    bad.X = sp.csr_matrix(x)
    SCGPT.setup_anndata(bad)
    snapshot = (bad.X.copy(), bad.obs.copy(), dict(bad.obsm))
    with pytest.raises(ValueError):
        model.embed(bad)
    assert (bad.X != snapshot[0]).nnz == 0
    pd.testing.assert_frame_equal(bad.obs, snapshot[1])
    assert "X_scGPT" not in bad.obsm
