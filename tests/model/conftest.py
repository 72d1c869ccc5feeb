"""Fixtures of the model tests: the atlas tests' cells and tiny model."""

from __future__ import annotations

import pytest

from scvi_scgpt import SCGPT
from tests._builders import ATLAS_TINY, make_counts


@pytest.fixture
def cells():
    """90 cells in 2 batches (a test module may define its own)."""
    return make_counts(90, n_batches=2)


@pytest.fixture
def model(cells):
    """A tiny untrained model on ``cells``."""
    SCGPT.setup_anndata(cells)
    return SCGPT(cells, **ATLAS_TINY)
