from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

OFFICIAL = Path(__file__).parent / "data" / "official"


@pytest.fixture(scope="session")
def official_dir() -> Path:
    return OFFICIAL


@pytest.fixture
def official_cells() -> ad.AnnData:
    """48 cells x 400 genes (360 in the fixture vocabulary), tie-free float32 values."""
    return ad.read_h5ad(OFFICIAL / "zeroshot_cells.h5ad")


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


@pytest.fixture
def counts_adata() -> ad.AnnData:
    return make_counts()
