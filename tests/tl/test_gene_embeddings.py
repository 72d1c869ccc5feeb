from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scvi_scgpt import tl

TABLE = pd.DataFrame(
    [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], index=["g0", "g1", "g2"], columns=["d0", "d1"]
)


def toy_adata(sparse: bool) -> ad.AnnData:
    x = np.array([[1.0, 0.0, 3.0, 5.0], [0.0, 2.0, 0.0, 1.0], [0.0, 0.0, 0.0, 4.0]])
    return ad.AnnData(
        sp.csr_matrix(x) if sparse else x,
        obs=pd.DataFrame(index=["c0", "c1", "c2"]),
        var=pd.DataFrame(index=["g0", "g1", "g2", "gX"]),
    )


@pytest.mark.parametrize("sparse", [True, False])
def test_scelmo_weighting_hand_computed(sparse):
    adata = toy_adata(sparse)
    with pytest.warns(UserWarning, match="1 cell"):
        missing = tl.cell_embeddings_from_genes(adata, TABLE)
    assert missing == ["gX"]
    # cell 0: (1 * [1, 0] + 3 * [1, 1]) / 4; cell 1: [0, 1]; cell 2 expresses only gX
    np.testing.assert_allclose(adata.obsm["X_gene_emb"], [[1.0, 0.75], [0.0, 1.0], [0.0, 0.0]])
    with pytest.warns(UserWarning):
        tl.cell_embeddings_from_genes(adata, TABLE, weighting="mean", key_added="aa")
    np.testing.assert_allclose(adata.obsm["aa"], [[1.0, 0.5], [0.0, 1.0], [0.0, 0.0]])
    assert set(adata.obsm) == {"X_gene_emb", "aa"}
    assert adata.obsm["aa"].dtype == np.float32
    if sparse:
        assert sp.issparse(adata.X)


def test_chunks_and_mapping_input():
    rng = np.random.default_rng(0)
    x = sp.random(50, 3, density=0.6, format="csr", random_state=0) + sp.csr_matrix(
        np.ones((50, 1)) * [[1, 0, 0]]
    )
    adata = ad.AnnData(sp.csr_matrix(x), var=pd.DataFrame(index=["g0", "g1", "g2"]))
    vectors = {g: rng.normal(size=4) for g in ["g0", "g1", "g2"]}
    tl.cell_embeddings_from_genes(adata, vectors, chunk_size=7, key_added="a")
    tl.cell_embeddings_from_genes(adata, vectors, chunk_size=1000, key_added="b")
    np.testing.assert_allclose(adata.obsm["a"], adata.obsm["b"], rtol=1e-5)
    dense = x.toarray()
    v = np.stack([vectors[g] for g in ["g0", "g1", "g2"]])
    np.testing.assert_allclose(
        adata.obsm["a"], dense @ v / dense.sum(1, keepdims=True), rtol=1e-4, atol=1e-6
    )


def test_bad_cell_embedding_inputs():
    adata = toy_adata(True)
    negative = toy_adata(True)
    negative.X = sp.csr_matrix(-negative.X.toarray())
    for bad, kwargs, error in [
        (adata, {"gene_embeddings": TABLE.set_axis(["a", "b", "c"])}, "None of the genes"),
        (adata, {"gene_embeddings": TABLE, "weighting": "max"}, "weighting"),
        (negative, {"gene_embeddings": TABLE}, "non-negative"),
        (adata, {"gene_embeddings": TABLE.set_axis(["g0", "g0", "g1"])}, "more than once"),
        (adata, {"gene_embeddings": TABLE, "layer": "nope"}, "Layer"),
    ]:
        with pytest.raises(ValueError, match=error):
            tl.cell_embeddings_from_genes(bad, **kwargs)
        assert not bad.obsm  # untouched


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".txt", ".csv.gz", ".npz"])
def test_read_gene_embeddings_formats(tmp_path, suffix):
    path = tmp_path / f"emb{suffix}"
    if suffix == ".npz":
        np.savez(path, genes=np.array(TABLE.index, dtype=str), embeddings=TABLE.to_numpy())
    elif suffix == ".txt":
        lines = ["3 2"] + [f"{g} {r[0]} {r[1]}" for g, r in TABLE.iterrows()]
        path.write_text("\n".join(lines) + "\n")
    else:
        TABLE.to_csv(path, sep="\t" if suffix == ".tsv" else ",")
    frame = tl.read_gene_embeddings(path)
    assert list(frame.index) == ["g0", "g1", "g2"]
    np.testing.assert_allclose(frame.to_numpy(), TABLE.to_numpy())
    assert frame.dtypes.unique().tolist() == [np.float32]


def test_read_gene_embeddings_headerless_csv(tmp_path):
    path = tmp_path / "emb.csv"
    path.write_text("g0,1,0\ng1,0,1\n")
    frame = tl.read_gene_embeddings(path)
    assert frame.shape == (2, 2) and list(frame.index) == ["g0", "g1"]


def test_read_gene_embeddings_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "emb.parquet"
    TABLE.rename_axis("gene").reset_index().to_parquet(path)
    np.testing.assert_allclose(tl.read_gene_embeddings(path).to_numpy(), TABLE.to_numpy())


def test_read_gene_embeddings_bad_files(tmp_path):
    dup = tmp_path / "dup.csv"
    dup.write_text("gene,d0,d1\ng0,1,0\ng0,0,1\n")
    with pytest.raises(ValueError, match="more than once"):
        tl.read_gene_embeddings(dup)
    mixed = tmp_path / "mixed.tsv"
    mixed.write_text("g0\t1\t0\ng1\t0\t1\t5\n")
    with pytest.raises(ValueError, match="mixed dimensions"):
        tl.read_gene_embeddings(mixed)
    ragged = tmp_path / "ragged.npz"
    np.savez(
        ragged,
        genes=np.array(["g0", "g1"]),
        embeddings=np.array([np.ones(2), np.ones(3)], dtype=object),
    )
    with pytest.raises(ValueError, match="mixed dimensions"):
        tl.read_gene_embeddings(ragged)
    text = tmp_path / "text.csv"
    text.write_text("g0,1,0\ng1,x,1\n")
    with pytest.raises(ValueError, match="non-numeric"):
        tl.read_gene_embeddings(text)
    pickle = tmp_path / "emb.pkl"
    pickle.write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match="pickles are not read"):
        tl.read_gene_embeddings(pickle)
    with pytest.raises(FileNotFoundError):
        tl.read_gene_embeddings(tmp_path / "absent.csv")
