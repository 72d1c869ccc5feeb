"""Small AnnData builders shared by the tests (import them; conftest holds fixtures only)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

#: The tiny model shape and the ``embed_atlas`` settings of the atlas tests.
ATLAS_TINY = {"d_model": 16, "n_heads": 2, "d_hid": 16, "n_layers": 1, "max_seq_len": 32}
ATLAS_RUN = {"block_size": 16, "progress_bar": False}


def make_counts(
    n_cells: int = 40,
    genes: list[str] | None = None,
    *,
    density: float = 0.4,
    seed: int = 0,
    n_batches: int = 1,
) -> ad.AnnData:
    """Random integer counts (many ties) over real gene symbols."""
    if genes is None:
        from scvi_scgpt.data import GeneVocab

        genes = GeneVocab.census().tokens[1000:1120]
    rng = np.random.default_rng(seed)
    x = sp.random(
        n_cells,
        len(genes),
        density=density,
        format="csr",
        random_state=seed,
        data_rvs=lambda n: rng.integers(1, 30, n),
    ).astype(np.float32)
    x[:, 0] = 1.0  # no empty cell
    x = sp.csr_matrix(x)
    obs = pd.DataFrame(
        {
            "batch": pd.Categorical([f"b{i % n_batches}" for i in range(n_cells)]),
            "cell_type": pd.Categorical([f"t{i % 3}" for i in range(n_cells)]),
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    return ad.AnnData(x, obs=obs, var=pd.DataFrame(index=list(genes)))


def make_structured_counts(
    n_cells: int = 240,
    n_genes: int = 80,
    *,
    n_types: int = 3,
    n_batches: int = 2,
    batch_shift: float = 4.0,
    seed: int = 0,
) -> ad.AnnData:
    """Poisson counts with cell-type marker genes and a strong batch effect.

    Each type over-expresses its own block of genes; each batch multiplies its own block of
    genes by ``batch_shift`` and switches on a few genes of its own.
    """
    from scvi_scgpt.data import GeneVocab

    rng = np.random.default_rng(seed)
    genes = GeneVocab.census().tokens[2000 : 2000 + n_genes]
    types = rng.integers(0, n_types, n_cells)
    batches = rng.integers(0, n_batches, n_cells)
    rate = np.full((n_cells, n_genes), 0.6)
    block = n_genes // (2 * n_types)
    for t in range(n_types):
        rate[types == t, t * block : (t + 1) * block] *= 8.0
    half = n_genes // 2
    for b in range(n_batches):
        cols = slice(half + b * 6, half + (b + 1) * 6)
        rate[batches == b, cols] = 6.0
        rate[batches == b, half + 20 :] *= batch_shift ** (b % 2)
    x = rng.poisson(rate).astype(np.float32)
    x[:, 0] += 1  # no empty cell
    obs = pd.DataFrame(
        {
            "batch": pd.Categorical([f"b{b}" for b in batches]),
            "cell_type": pd.Categorical([f"type{t}" for t in types]),
        },
        index=[f"c{i}" for i in range(n_cells)],
    )
    return ad.AnnData(sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=genes))


def make_mudata(
    n_cells: int = 60,
    n_genes: int = 40,
    n_proteins: int = 6,
    *,
    n_peaks: int = 0,
    protein_cells: int | None = None,
    seed: int = 0,
):
    """A small CITE-seq-like MuData: ``"rna"`` and ``"prot"`` (and ``"atac"`` with peaks).

    Cell types drive both modalities; ``protein_cells`` keeps proteins for the first cells
    only (mosaic data). ``mdata.obs`` holds ``batch`` and ``cell_type``.
    """
    import mudata as md

    rna = make_structured_counts(n_cells, n_genes, n_types=3, n_batches=2, seed=seed)
    rng = np.random.default_rng(seed + 1)
    types = rna.obs["cell_type"].cat.codes.to_numpy()
    rate = np.full((n_cells, n_proteins), 5.0)
    for t in range(3):
        rate[types == t, t % n_proteins] = 80.0
    prot = ad.AnnData(
        sp.csr_matrix(rng.poisson(rate).astype(np.float32) + 1),
        obs=rna.obs.copy(),
        var=pd.DataFrame(index=[f"CD{i + 1}" for i in range(n_proteins)]),
    )
    if protein_cells is not None:
        prot = prot[:protein_cells].copy()
    mods = {"rna": rna, "prot": prot}
    if n_peaks:
        opened = rng.random((n_cells, n_peaks)) < (
            0.1 + 0.5 * (types[:, None] == (np.arange(n_peaks) % 3))
        )
        mods["atac"] = ad.AnnData(
            sp.csr_matrix(opened.astype(np.float32)),
            obs=rna.obs.copy(),
            var=pd.DataFrame(index=[f"chr1:{1000 * i}-{1000 * i + 500}" for i in range(n_peaks)]),
        )
    mdata = md.MuData(mods)
    mdata.obs["batch"] = rna.obs["batch"].reindex(mdata.obs_names).to_numpy()
    mdata.obs["cell_type"] = rna.obs["cell_type"].reindex(mdata.obs_names).to_numpy()
    mdata.obs["batch"] = mdata.obs["batch"].astype("category")
    mdata.obs["cell_type"] = mdata.obs["cell_type"].astype("category")
    return mdata


def write_soma(adata: ad.AnnData, uri) -> str:
    """Write ``adata`` as a local TileDB-SOMA experiment (measurement "RNA", X layer "data").

    The matrix goes in as a layer with ``X=None``: tiledbsoma 2.3's ``from_anndata`` fails on
    anndata 0.13, where ``X`` is also listed as ``layers[None]``; this way both stacks write
    the same experiment.
    """
    import pytest

    tiledbsoma_io = pytest.importorskip("tiledbsoma.io")
    ingest = ad.AnnData(obs=adata.obs.copy(), var=adata.var.copy(), layers={"data": adata.X})
    tiledbsoma_io.from_anndata(str(uri), ingest, measurement_name="RNA")
    return str(uri)


def write_annbatch_collection(paths, out, seed: int = 0) -> str:
    """An annbatch collection (several small datasets, shuffled) from ``.h5ad`` paths."""
    import pytest

    annbatch = pytest.importorskip("annbatch")  # Python >= 3.12
    annbatch.DatasetCollection(str(out)).add_adatas(
        [str(p) for p in paths],
        shuffle=True,
        rng=np.random.default_rng(seed),
        dataset_size="20KB",
        shuffle_chunk_size=10,
        n_obs_per_chunk=8,
    )
    return str(out)
