"""SCGPT on MuData: setup_mudata, joint vocabulary, embedding, mosaic cells, training, I/O."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from scvi_scgpt import SCGPT
from scvi_scgpt._constants import TOKEN_KEYS
from scvi_scgpt.model._multiomic import _is_binary
from tests._builders import make_mudata

MODS = {"rna_layer": "rna", "protein_layer": "prot"}
TINY = {"d_model": 16, "n_heads": 2, "d_hid": 16, "n_layers": 1, "dropout": 0.0}

warnings.filterwarnings("ignore", category=FutureWarning)


def _setup(mdata, **kwargs):
    kwargs.setdefault("modalities", MODS)
    SCGPT.setup_mudata(mdata, batch_key="batch", labels_key="cell_type", **kwargs)
    return mdata


@pytest.fixture
def mdata():
    return _setup(make_mudata())


def _snapshot(mdata):
    return (
        set(mdata.uns),
        list(mdata.obs.columns),
        {k: list(a.obs.columns) for k, a in mdata.mod.items()},
        {k: a.X.copy() for k, a in mdata.mod.items()},
    )


def _unchanged(before, mdata):
    after = _snapshot(mdata)
    assert before[:3] == after[:3]
    for key, x in before[3].items():
        np.testing.assert_array_equal(x.toarray(), mdata.mod[key].X.toarray())


# ---------------------------------------------------------------------- setup errors
def _bad(mutate, match, **setup):
    mdata = make_mudata()
    mutate(mdata)
    before = _snapshot(mdata)
    with pytest.raises((ValueError, KeyError, TypeError), match=match):
        SCGPT.setup_mudata(mdata, batch_key="batch", **{"modalities": MODS, **setup})
    _unchanged(before, mdata)


def test_setup_needs_modalities():
    _bad(lambda m: None, "needs `modalities`", modalities=None)


def test_setup_rejects_unknown_modality_key():
    _bad(lambda m: None, "not a modality", modalities={"rna_layer": "rna", "protein_layer": "x"})


def test_setup_rejects_unknown_argument():
    _bad(lambda m: None, "Unknown setup argument", modalities={**MODS, "size_factor_key": "rna"})


def test_setup_needs_two_modalities():
    _bad(lambda m: None, "two or three", modalities={"rna_layer": "rna"})


def test_setup_rejects_nan_and_negative_values():
    def nan(m):
        m.mod["prot"].X.data[0] = np.nan

    def negative(m):
        m.mod["rna"].X.data[0] = -1

    _bad(nan, "NaN")
    _bad(negative, "negative")


def test_setup_rejects_duplicate_features():
    def dup(m):
        names = list(m.mod["prot"].var_names)
        names[1] = names[0]
        m.mod["prot"].var_names = names

    _bad(dup, "repeated feature names")


def test_setup_rejects_empty_modality():
    import mudata as md

    mdata = make_mudata()
    empty = md.MuData({"rna": mdata.mod["rna"], "prot": mdata.mod["prot"][:, :0].copy()})
    with pytest.raises(ValueError, match="is empty"):
        SCGPT.setup_mudata(empty, modalities=MODS)


def test_setup_rejects_obs_names_that_do_not_line_up():
    def rename(m):
        m.mod["prot"].obs_names = [f"other{i}" for i in range(m.mod["prot"].n_obs)]

    _bad(rename, "do not line up")


def test_setup_rejects_batch_key_in_a_partial_modality():
    mdata = make_mudata(protein_cells=30)
    with pytest.raises(ValueError, match="lacks some cells"):
        SCGPT.setup_mudata(mdata, batch_key="batch", modalities={**MODS, "batch_key": "prot"})


def test_setup_anndata_refuses_mudata():
    with pytest.raises(TypeError, match="setup_mudata"):
        SCGPT.setup_anndata(make_mudata())


# ---------------------------------------------------------------------- model
def test_joint_vocabulary_and_modality_tokens(mdata):
    model = SCGPT(mdata, **TINY)
    vocab = model.vocab_
    assert "p_CD1" in vocab and "CD1" not in list(mdata.mod["rna"].var_names)
    genes = list(mdata.mod["rna"].var_names)
    assert [vocab[g] for g in genes] == list(range(len(genes)))  # genes first
    assert model.modality_vocab_ == ["Protein", "RNA", "<pad>", "<cls>", "<eoc>"]
    assert model.architecture.use_mod and model.architecture.n_mod_tokens == 5
    batch = next(iter(model._token_batches(mdata, np.arange(4), batch_size=4)))[1]
    mods, genes_ids = batch[TOKEN_KEYS.MODALITY_IDS], batch[TOKEN_KEYS.GENE_IDS]
    assert (mods[:, 0] == 3).all()
    protein_ids = {vocab[f"p_CD{i + 1}"] for i in range(6)}
    is_protein = np.isin(genes_ids, list(protein_ids))
    assert (mods[is_protein] == 0).all() and is_protein.any()


def test_latent_order_and_embed_writes_only_obsm(mdata):
    model = SCGPT(mdata, **TINY)
    latent = model.get_latent_representation(mdata)
    assert latent.shape == (mdata.n_obs, 16)
    reversed_rows = model.get_latent_representation(mdata, indices=np.arange(mdata.n_obs)[::-1])
    np.testing.assert_allclose(reversed_rows[::-1], latent, atol=1e-6)
    before = _snapshot(mdata)
    model.embed(mdata, key_added="X_test")
    _unchanged(before, mdata)
    assert list(mdata.obsm) == ["X_test"] or "X_test" in mdata.obsm
    np.testing.assert_allclose(mdata.obsm["X_test"], latent, atol=1e-6)


def test_mosaic_cells_have_no_tokens_of_an_unmeasured_modality():
    mdata = _setup(make_mudata(protein_cells=30))
    model = SCGPT(mdata, **TINY)
    source = model._cell_source(mdata)
    protein = model.modality_vocab_.index("Protein")
    assert source.modalities.measured[:30, protein].all()
    assert not source.modalities.measured[30:, protein].any()
    inputs = model._collator_inputs("multiomic")
    from scvi_scgpt.dataloaders import MultiOmicCollator

    collator = MultiOmicCollator(
        model._column_vocab_ids(mdata),
        model.tokenizer_config,
        cls_id=model.vocab_.cls_id,
        pad_id=model.vocab_.pad_id,
        mask_ratio=0.4,
        **inputs["collator"],
    )
    torch.manual_seed(0)
    out = collator({TOKEN_KEYS.CELL_INDEX: np.arange(25, 40)})
    mods = out[TOKEN_KEYS.MODALITY_IDS].numpy()
    has_protein = (mods == protein).any(1)
    np.testing.assert_array_equal(has_protein, np.arange(25, 40) < 30)
    # the loss sees masked tokens only: none is a protein of a protein-less cell
    masked = out[TOKEN_KEYS.VALUES].numpy() == -1.0
    assert masked[5:].any() and not (masked & (mods == protein))[5:].any()
    latent = model.get_latent_representation(mdata)
    assert np.isfinite(latent).all() and latent.shape == (60, 16)


def test_train_multiomic_save_load_and_query(tmp_path, mdata):
    model = SCGPT(mdata, **TINY)
    model.train("multiomic", max_epochs=2, batch_size=16, n_top_genes=20)
    task = model.training_task_
    assert task["task"] == "multiomic" and task["hyperparameters"]["lr_gamma"] == 0.95
    assert len(model.gene_subset_) == 20 + 6  # 20 HVGs and every protein
    assert np.isfinite(model.history_["train_loss"].to_numpy(dtype=float)).all()
    latent = model.get_latent_representation(mdata)
    model.save(tmp_path / "m", save_anndata=True)
    loaded = SCGPT.load(tmp_path / "m")
    assert loaded.vocab_ == model.vocab_
    np.testing.assert_allclose(loaded.get_latent_representation(), latent, atol=1e-5)

    query = make_mudata(seed=3)
    query.obs["batch"] = query.obs["batch"].cat.rename_categories({"b0": "b0", "b1": "q1"})
    mapped = SCGPT.load_query_data(query, model)
    assert mapped.get_latent_representation(query).shape == (query.n_obs, 16)

    import mudata as md

    lacking = make_mudata(seed=4)
    lacking = md.MuData({"rna": lacking.mod["rna"]})
    lacking.obs["batch"] = lacking.mod["rna"].obs["batch"].to_numpy()
    with pytest.raises(ValueError, match="lacks"):
        SCGPT.load_query_data(lacking, model)


def test_rna_atac_mudata_end_to_end():
    mdata = make_mudata(n_peaks=30)
    SCGPT.setup_mudata(
        mdata,
        batch_key="batch",
        modalities={"rna_layer": "rna", "protein_layer": "prot", "atac_layer": "atac"},
    )
    model = SCGPT(mdata, **TINY)
    assert "chr1:1000-1500" in model.vocab_
    assert model.modality_vocab_[:3] == ["ATAC", "Protein", "RNA"]
    model.train("multiomic", max_epochs=1, n_top_genes={"RNA": 20, "ATAC": 10})
    peaks = [t for t in model.gene_subset_ if t.startswith("chr")]
    assert len(peaks) == 10
    assert model.get_latent_representation(mdata).shape == (60, 16)
    # binary peaks are presence only (the top bin), counts are binned as before
    layout = model._cell_source(mdata).modalities
    atac = model.modality_vocab_.index("ATAC")
    assert layout.presence_only == (atac,)
    assert _is_binary(sp.csr_matrix(mdata["atac"].X))
    assert not _is_binary(sp.csr_matrix(mdata["atac"].X * 2))


def test_from_pretrained_adds_protein_rows(official_dir):
    import anndata as ad
    import mudata as md

    cells = ad.read_h5ad(official_dir / "zeroshot_cells.h5ad")
    prot = ad.AnnData(
        np.random.default_rng(0).poisson(20, (cells.n_obs, 3)).astype(np.float32) + 1,
        obs=cells.obs[[]].copy(),
    )
    prot.var_names = ["CD3", "CD4", "CD8"]
    mdata = md.MuData({"rna": cells, "prot": prot})
    SCGPT.setup_mudata(mdata, modalities=MODS)
    rna_only = SCGPT.setup_anndata(cells) or SCGPT.from_pretrained(
        official_dir / "zeroshot_model", cells
    )
    model = SCGPT.from_pretrained(official_dir / "zeroshot_model", mdata)
    n_old = len(rna_only.vocab_)
    assert len(model.vocab_) == n_old + 3
    weight = model.module.encoder.embedding.weight.detach()
    torch.testing.assert_close(weight[:n_old], rna_only.module.encoder.embedding.weight)
    assert weight[n_old:].abs().max() <= 0.1
    assert model.get_latent_representation(mdata).shape[0] == mdata.n_obs

    fresh = SCGPT.from_pretrained(
        official_dir / "zeroshot_model", mdata, inherit="gene_embeddings"
    )
    torch.testing.assert_close(fresh.module.encoder.embedding.weight, weight)
    layer = "transformer_encoder.layers.0.self_attn.in_proj_weight"
    assert not torch.equal(fresh.module.state_dict()[layer], model.module.state_dict()[layer])


def test_from_pretrained_official_multiomic_model(official_dir):
    import anndata as ad
    import mudata as md
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    obs = pd.DataFrame(
        {"batch": pd.Categorical(["b0", "b1"] * 10)}, index=[f"c{i}" for i in range(20)]
    )
    rna = ad.AnnData(
        sp.csr_matrix(rng.poisson(3, (20, 24)).astype(np.float32) + 1),
        obs=obs.copy(),
        var=pd.DataFrame(index=[f"GENE{i:02d}" for i in range(24)]),
    )
    prot = ad.AnnData(
        sp.csr_matrix(rng.poisson(30, (20, 6)).astype(np.float32) + 1),
        obs=obs.copy(),
        var=pd.DataFrame(index=[f"CD{i}" for i in range(1, 7)]),
    )
    mdata = md.MuData({"rna": rna, "prot": prot})
    mdata.obs["batch"] = obs["batch"]
    SCGPT.setup_mudata(mdata, batch_key="batch", modalities=MODS)
    model = SCGPT.from_pretrained(official_dir / "multiomic_model", mdata)
    audit = model.checkpoint_audit_
    assert not audit.initialised and not audit.mismatched and not audit.unexpected
    assert len(model.vocab_) == 33 and model.architecture.use_mod
    assert model.get_latent_representation(mdata).shape == (20, 32)


def test_embed_atlas_on_an_in_memory_mudata(tmp_path):
    """A MuData (mosaic: proteins for some cells) goes through the atlas path unchanged."""
    import anndata as ad

    mdata = _setup(make_mudata(protein_cells=40))
    model = SCGPT(mdata, use_batch_labels=True, **TINY)
    expected = model.get_latent_representation(mdata)
    out = model.embed_atlas(mdata, tmp_path / "o.zarr", block_size=16, obs_columns=["batch"],
                            progress_bar=False)  # fmt: skip
    result = ad.read_zarr(out)
    assert list(result.obs_names) == list(mdata.obs_names)
    assert np.abs(result.obsm["X_scGPT"] - expected).max() <= 1e-6
    assert "X_scGPT" not in mdata.obsm
