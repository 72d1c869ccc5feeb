from __future__ import annotations

import networkx as nx
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score

from scvi_scgpt import tl


def planted_embeddings(n_modules=4, size=10, dim=16, noise=0.2, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_modules, dim))
    x = np.repeat(centers, size, 0) + noise * rng.normal(size=(n_modules * size, dim))
    return pd.DataFrame(x, index=[f"g{i}" for i in range(n_modules * size)])


def test_cosine_similarity_hand_case():
    sim = tl.cosine_similarity(np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]]))
    r = 1 / np.sqrt(2)
    np.testing.assert_allclose(sim, [[1, r, 0], [r, 1, r], [0, r, 1]], atol=1e-6)


def test_knn_network_recovers_planted_modules():
    emb = planted_embeddings()
    net = tl.gene_similarity_network(emb, n_neighbors=5, min_program_size=5)
    truth = np.repeat(np.arange(4), 10)
    assert list(net.obs_names) == list(emb.index)
    assert net.X.shape == (40, 16)
    assert adjusted_rand_score(truth, net.obs["program"].astype(str)) == 1.0
    graph = net.obsp["similarity"]
    assert sp.issparse(graph)
    assert (graph != graph.T).nnz == 0
    assert graph.diagonal().sum() == 0
    # every gene keeps at least its 5 neighbours, all inside its own module
    rows, cols = graph.nonzero()
    assert (np.asarray((graph > 0).sum(1)).ravel() >= 5).all()
    assert (truth[rows] == truth[cols]).mean() > 0.95
    assert net.uns["params"]["graph"] == "knn"
    assert net.uns["params"]["n_neighbors"] == 5


def test_threshold_network_and_small_programs():
    emb = planted_embeddings()
    emb[[14, 15]] = 0.0  # the two lone genes live in the last two (orthogonal) dimensions
    lone = pd.DataFrame(np.eye(16)[14:] * 5, index=["lone0", "lone1"])
    net = tl.gene_similarity_network(pd.concat([emb, lone]), threshold=0.5, min_program_size=5)
    assert net.uns["params"]["graph"] == "threshold"
    graph = net.obsp["similarity"]
    assert graph.data.min() >= 0.5
    assert net.obs["program"].isna().sum() == 2  # the two lone genes are unassigned
    assert set(net.obs.loc[["lone0", "lone1"], "program"].isna()) == {True}
    programs = tl.program_genes(net)
    assert sorted(len(g) for g in programs.values()) == [10, 10, 10, 10]


def test_edges_and_networkx_export():
    net = tl.gene_similarity_network(planted_embeddings(), n_neighbors=5)
    edges = tl.network_edges(net)
    assert list(edges.columns) == ["source", "target", "weight"]
    assert edges["weight"].is_monotonic_decreasing
    assert len(edges) == sp.triu(net.obsp["similarity"], k=1).nnz
    strong = tl.network_edges(net, min_weight=0.9)
    assert (strong["weight"] >= 0.9).all()
    graph = tl.network_to_networkx(net)
    assert isinstance(graph, nx.Graph)
    assert graph.number_of_nodes() == 40 and graph.number_of_edges() == len(edges)
    sub = tl.network_to_networkx(net, program="0")
    assert sub.number_of_nodes() == 10
    assert {d["program"] for _, d in sub.nodes(data=True)} == {"0"}
    with pytest.raises(ValueError, match="not in the network"):
        tl.network_to_networkx(net, program="99")


def test_bad_network_inputs():
    emb = planted_embeddings(n_modules=1, size=10)
    with pytest.raises(ValueError, match="needs at least 16 genes; got 10"):
        tl.gene_similarity_network(emb, n_neighbors=15)
    dup = emb.copy()
    dup.index = ["a"] * 2 + list(dup.index[2:])
    with pytest.raises(ValueError, match="more than once"):
        tl.gene_similarity_network(dup, n_neighbors=3)
    with pytest.raises(ValueError, match="mixed dimensions"):
        tl.gene_similarity_network({"a": np.ones(3), "b": np.ones(4)}, n_neighbors=1)
    with pytest.raises(ValueError, match="threshold"):
        tl.gene_similarity_network(emb, threshold=1.5)
    zero = emb.copy()
    zero.iloc[0] = 0.0
    with pytest.raises(ValueError, match="all zeros"):
        tl.gene_similarity_network(zero, n_neighbors=3)
    with pytest.raises(ValueError, match="obsp"):
        tl.network_edges(planted_embeddings())  # a DataFrame, not a network


def test_score_gene_programs_writes_only_score_columns():
    import anndata as ad

    rng = np.random.default_rng(0)
    n_cells, genes = 60, [f"g{i}" for i in range(40)]
    x = rng.poisson(1.0, size=(n_cells, 40)).astype(np.float32)
    x[:30, :10] += 5  # program "a" is high in the first 30 cells
    adata = ad.AnnData(
        sp.csr_matrix(np.log1p(x)),
        obs=pd.DataFrame({"ct": ["hi"] * 30 + ["lo"] * 30}, index=[f"c{i}" for i in range(60)]),
        var=pd.DataFrame(index=genes),
    )
    before = (set(adata.obs), set(adata.uns), set(adata.obsm), set(adata.var))
    written = tl.score_gene_programs(
        adata, {"a": genes[:10], "b": genes[20:30] + ["absent"]}, key_added="ps"
    )
    assert written == ["ps_a", "ps_b"]
    assert set(adata.obs) - before[0] == {"ps_a", "ps_b"}
    assert (set(adata.uns), set(adata.obsm), set(adata.var)) == before[1:]
    assert adata.obs["ps_a"].min() == 0.0 and adata.obs["ps_a"].max() == 1.0
    assert adata.obs["ps_a"][:30].mean() > adata.obs["ps_a"][30:].mean() + 0.3
    with pytest.warns(UserWarning, match="Skipped 1 program"):
        written = tl.score_gene_programs(adata, {"a": genes[:10], "z": ["nope"]}, key_added="q")
    assert written == ["q_a"]
    with pytest.raises(ValueError, match="No program"):
        tl.score_gene_programs(adata, {"z": ["nope"]})
    with pytest.raises(TypeError, match="list of genes"):
        tl.score_gene_programs(adata, {"z": "g1"})
