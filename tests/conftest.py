from __future__ import annotations

from pathlib import Path

import anndata as ad
import pytest

from tests._builders import make_counts

OFFICIAL = Path(__file__).parent / "data" / "official"


@pytest.fixture(scope="session")
def official_dir() -> Path:
    return OFFICIAL


@pytest.fixture
def official_cells() -> ad.AnnData:
    """48 cells x 400 genes (360 in the fixture vocabulary), tie-free float32 values."""
    return ad.read_h5ad(OFFICIAL / "zeroshot_cells.h5ad")


@pytest.fixture
def counts_adata() -> ad.AnnData:
    return make_counts()
