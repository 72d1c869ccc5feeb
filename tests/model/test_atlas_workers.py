"""DataLoader workers read blocks with handles of their own (forked or spawned)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from scvi_scgpt.data import AnnDataFileSource, AtlasStore
from scvi_scgpt.dataloaders import AtlasDataModule
from tests._builders import make_counts, write_soma


class HandleSource(AnnDataFileSource):
    """Records in each block which process read it and with which open file."""

    def read_block(self, spec, obs_columns=()):
        blocks = super().read_block(spec, obs_columns)
        for block in blocks:
            n = len(block.rows)
            block.obs["pid"] = np.full(n, os.getpid())
            block.obs["handle"] = np.full(n, id(self._handle(block.part)[0]))
        return blocks


def _datamodule(source, tmp_path, num_workers):
    dm = AtlasDataModule(
        source,
        AtlasStore(tmp_path / "o.zarr"),
        block_size=16,
        create_store=lambda: None,
        num_workers=num_workers,
    )
    dm.pending = list(dm.all_blocks)
    return dm


def test_forked_workers_reopen_the_files_of_the_parent(tmp_path):
    cells = make_counts(40)
    cells.write_h5ad(tmp_path / "cells.h5ad")
    source = HandleSource(tmp_path / "cells.h5ad")
    source.read_range(0, 0, 5)  # the parent opens the file (as the CLI and create_store do)
    parent = id(source._handle(0)[0])
    loader = _datamodule(source, tmp_path, 1).predict_dataloader()
    assert loader.multiprocessing_context is None or (
        loader.multiprocessing_context.get_start_method() == "fork"
    )
    seen = 0
    for _spec, blocks in loader:
        for block in blocks:
            assert block.obs["pid"][0] != os.getpid()  # read in the worker...
            assert block.obs["handle"][0] != parent  # ...with its own open file
            np.testing.assert_array_equal(block.X.toarray(), cells.X[block.rows].toarray())
            seen += len(block.rows)
    assert seen == 40
    source.close()


def test_soma_workers_are_spawned(tmp_path):
    pytest.importorskip("tiledbsoma")
    from scvi_scgpt.data import open_source

    cells = make_counts(40)
    source = open_source(write_soma(cells, tmp_path / "exp"))
    source.read_range(0, 0, 5)
    loader = _datamodule(source, tmp_path, 2).predict_dataloader()
    assert loader.multiprocessing_context.get_start_method() == "spawn"
    assert _datamodule(source, tmp_path, 0).predict_dataloader().num_workers == 0
    source.close()
