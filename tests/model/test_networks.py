from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from scvi_scgpt import SCGPT, tl
from scvi_scgpt._constants import TOKEN_KEYS as K
from scvi_scgpt.datasets import simulate_perturbseq

TINY = {"d_model": 16, "n_heads": 2, "d_hid": 16, "n_layers": 2, "dropout": 0.0}


@pytest.fixture(scope="module")
def sim_model():
    adata = simulate_perturbseq(
        n_genes=30,
        n_regulators=5,
        n_control_cells=24,
        cells_per_perturbation=8,
        n_doubles=1,
        seed=0,
    )
    SCGPT.setup_anndata(adata)
    torch.manual_seed(0)
    model = SCGPT(adata, max_seq_len=64, **TINY)
    return adata, model


def snapshot(adata):
    return (set(adata.obs), set(adata.var), set(adata.uns), set(adata.obsm), set(adata.layers))


def test_token_gene_embeddings(sim_model):
    adata, model = sim_model
    table = model.gene_embeddings(["TF00", "G003"])
    assert list(table.index) == ["TF00", "G003"] and table.shape == (2, 16)
    ids = torch.as_tensor(model.vocab_.lookup(["TF00", "G003"]))
    with torch.no_grad():
        expected = model.module.encoder(ids).numpy()
    np.testing.assert_allclose(table.to_numpy(), expected, rtol=1e-6)
    assert model.gene_embeddings().shape[0] == 30  # every vocabulary gene, no specials
    with pytest.raises(ValueError, match="not in the model vocabulary: \\['NOPE'\\]"):
        model.gene_embeddings(["TF00", "NOPE"])


def test_contextual_gene_embeddings(sim_model):
    adata, model = sim_model
    before = snapshot(adata)
    one = model.gene_embeddings(adata=adata, batch_size=1)
    many = model.gene_embeddings(adata=adata, batch_size=16)
    np.testing.assert_allclose(one.to_numpy(), many.to_numpy(), rtol=1e-4, atol=1e-5)
    assert snapshot(adata) == before
    # only the cells that express a gene count: a gene expressed in one chosen cell
    x = adata.X.toarray()
    cell = int(np.flatnonzero(x[:, 5] > 0)[0])
    single = model.gene_embeddings([adata.var_names[5]], adata=adata, indices=[cell])
    assert single.shape == (1, 16)
    with pytest.warns(UserWarning, match="expressed in none"):
        zero_cells = np.flatnonzero(x[:, 5] == 0)[:3]
        out = model.gene_embeddings([adata.var_names[5]], adata=adata, indices=zero_cells)
    assert out.shape == (0, 16)
    with pytest.raises(ValueError, match="not genes of adata.var_names"):
        model.gene_embeddings(["NOPE"], adata=adata)


def test_gene_network_writes_only_its_key(sim_model):
    adata, model = sim_model
    before = snapshot(adata)
    net = model.gene_network(adata, n_neighbors=5, min_program_size=2, key_added="gn")
    assert list(net.obs_names) == list(adata.var_names)
    assert "similarity" in net.obsp and "program" in net.obs
    assert net.uns["params"]["method"] == "embedding"
    assert snapshot(adata)[2] - before[2] == {"gn"}
    assert snapshot(adata)[:2] == before[:2] and snapshot(adata)[3:] == before[3:]
    stored = adata.uns["gn"]
    assert list(stored["genes"]) == list(net.obs_names)
    assert (stored["similarity"] != net.obsp["similarity"]).nnz == 0
    assert set(stored["params"]) >= {"n_neighbors", "resolution", "method"}
    edges = tl.network_edges(net)
    assert {"source", "target", "weight"} == set(edges.columns)
    ctx = model.gene_network(adata, method="contextual", n_neighbors=5, key_added="gc")
    assert ctx.uns["params"]["method"] == "contextual"
    plain = model.gene_network(genes=list(adata.var_names[:12]), n_neighbors=3)
    assert plain.n_obs == 12


def test_gene_network_bad_inputs(sim_model):
    adata, model = sim_model
    before = snapshot(adata)
    with pytest.raises(ValueError, match="needs at least 16 genes; got 10"):
        model.gene_network(adata, genes=list(adata.var_names[:10]), n_neighbors=15)
    with pytest.raises(ValueError, match="not genes of"):
        model.gene_network(adata, genes=["TF00", "NOPE"], n_neighbors=1)
    with pytest.raises(ValueError, match="not in the model vocabulary"):
        model.gene_network(genes=["NOPE", "TF00"], n_neighbors=1)
    with pytest.raises(ValueError, match="needs the cells"):
        model.gene_network(method="contextual")
    with pytest.raises(ValueError, match="method"):
        model.gene_network(adata, method="attention")
    assert snapshot(adata) == before


def test_attention_targets(sim_model):
    adata, model = sim_model
    before = snapshot(adata)
    kwargs = {"groupby": "condition", "control": "ctrl", "top_k": 5}
    table = model.attention_targets(adata, perturbed=["TF01+ctrl", "TF02+ctrl"], **kwargs)
    assert list(table.columns) == ["perturbation", "gene", "score", "rank"]
    assert table.groupby("perturbation").size().to_dict() == {"TF01+ctrl": 5, "TF02+ctrl": 5}
    assert "TF01" not in set(table.loc[table["perturbation"] == "TF01+ctrl", "gene"])
    assert (table.groupby("perturbation")["score"].diff().dropna() <= 0).all()
    assert snapshot(adata) == before
    # batching does not change the result
    small = model.attention_targets(
        adata, perturbed=["TF01+ctrl", "TF02+ctrl"], batch_size=3, **kwargs
    )
    pd.testing.assert_frame_equal(table, small, atol=1e-6)
    double = [c for c in adata.obs["condition"].unique() if "ctrl" not in c][0]
    out = model.attention_targets(
        adata, perturbed=double, mode="perturbed", layer=0, max_cells=4, **kwargs
    )
    assert len(out) == 5 and not set(double.split("+")) & set(out["gene"])


def test_attention_targets_match_manual_replay(sim_model):
    """The control matrix equals the official procedure replayed cell by cell."""
    adata, model = sim_model
    genes = list(adata.var_names)
    out = model.attention_targets(
        adata,
        groupby="condition",
        control="ctrl",
        perturbed="TF01+ctrl",
        mode="control",
        top_k=None,
    )
    cells = np.flatnonzero(adata.obs["condition"] == "ctrl")
    tokenizer = dataclasses.replace(model.tokenizer_config, include_zero_genes=True)
    vocab_ids = list(model.vocab_.lookup(genes))
    total = np.zeros((30, 30))
    model.module.eval()
    batches = model._token_batches(
        adata, cells, 1, column_ids=model._column_vocab_ids(adata), tokenizer=tokenizer
    )
    for _, arrays in batches:  # one cell at a time
        t = {k: torch.from_numpy(v) for k, v in arrays.items()}
        with torch.no_grad():
            res = model.module.inference(
                t[K.GENE_IDS], t[K.VALUES], t[K.PADDING_MASK], attention_layer=-1
            )
        raw = res["attention"]["raw"][0, :, 1:, 1:].numpy()  # (heads, genes, genes)
        position = {int(i): k for k, i in enumerate(t[K.GENE_IDS][0, 1:].numpy())}
        perm = [position[int(i)] for i in vocab_ids]
        raw = raw[:, perm][:, :, perm]
        rows = (raw.argsort(-1, kind="stable").argsort(-1, kind="stable")) / 30
        cols = rows.argsort(-2, kind="stable").argsort(-2, kind="stable") / 30
        total += cols.mean(0)
    mean = total / len(cells)
    col = genes.index("TF01")
    expected = np.delete(mean[:, col], col)
    got = out.set_index("gene").loc[[g for g in genes if g != "TF01"], "score"].to_numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_attention_targets_bad_inputs(sim_model):
    adata, model = sim_model
    before = snapshot(adata)
    kw = {"groupby": "condition", "control": "ctrl"}
    with pytest.raises(ValueError, match="not a column of adata.obs"):
        model.attention_targets(adata, groupby="nope", control="ctrl", perturbed="TF01+ctrl")
    with pytest.raises(ValueError, match="not found in adata.obs"):
        model.attention_targets(adata, perturbed="TF99+ctrl", **kw)
    with pytest.raises(ValueError, match="not found in adata.obs"):
        model.attention_targets(adata, groupby="condition", control="none", perturbed="TF01+ctrl")
    with pytest.raises(ValueError, match="perturb no gene"):
        model.attention_targets(adata, perturbed="ctrl", **kw)
    with pytest.raises(ValueError, match="layer"):
        model.attention_targets(adata, perturbed="TF01+ctrl", layer=5, **kw)
    with pytest.raises(ValueError, match="Perturbed gene"):
        model.attention_targets(adata, perturbed="TF01+ctrl", genes=["G001", "G002"], **kw)
    weird = adata.copy()
    weird.obs["condition"] = weird.obs["condition"].astype(str)
    weird.obs.iloc[-1, 0] = "A++B"
    SCGPT.setup_anndata(weird)
    with pytest.raises(ValueError, match="Malformed"):
        model.attention_targets(weird, perturbed="A++B", **kw)
    assert snapshot(adata) == before
