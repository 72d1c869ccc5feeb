"""embed_atlas finishes, verifies and repairs its store; empty cells; block listings."""

from __future__ import annotations

import os

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from scvi_scgpt import SCGPT
from scvi_scgpt.data import AnnDataFileSource, AtlasStore
from scvi_scgpt.data._atlas_store import BLOCKS_DIR
from tests._builders import ATLAS_RUN, ATLAS_TINY

TINY = ATLAS_TINY
RUN = ATLAS_RUN


@pytest.fixture
def source(cells, tmp_path):
    cells.write_h5ad(tmp_path / "cells.h5ad")
    return tmp_path / "cells.h5ad"


class Killed(RuntimeError):
    """A process killed at this point."""


class FailingSource(AnnDataFileSource):
    """Dies while reading one block, as a killed process would."""

    fail_at: int | None = None

    def read_block(self, spec, obs_columns=()):
        if spec.index == self.fail_at:
            raise Killed("the process died here")
        return super().read_block(spec, obs_columns)


def _same(a, b):
    a, b = ad.read_zarr(a), ad.read_zarr(b)
    np.testing.assert_array_equal(a.obsm["X_scGPT"], b.obsm["X_scGPT"])
    assert list(a.obs_names) == list(b.obs_names)


def test_resume_finishes_a_store_whose_blocks_are_all_written(
    model, source, tmp_path, monkeypatch
):
    whole = model.embed_atlas(source, tmp_path / "whole.zarr", **RUN)
    out = tmp_path / "o.zarr"

    def killed(self, *args, **kwargs):
        raise Killed("killed between the last block and finish")

    with monkeypatch.context() as patch:
        patch.setattr(AtlasStore, "finish", killed)
        with pytest.raises(Killed):
            model.embed_atlas(source, out, **RUN)
    store = AtlasStore(out)
    assert store.done_blocks() == set(range(6)) and not store.is_complete()
    assert model.embed_atlas(source, out, **RUN) == str(out)
    assert store.is_complete()
    record = ad.read_zarr(out).uns["scvi_scgpt_atlas"]
    assert record["complete"] and record["n_cells"] == 90
    _same(whole, out)


def test_a_block_with_nan_gets_no_marker_and_is_rerun(model, source, tmp_path, monkeypatch):
    import scvi_scgpt.model._atlas as atlas

    whole = model.embed_atlas(source, tmp_path / "whole.zarr", **RUN)
    out = tmp_path / "o.zarr"
    result = atlas.block_result

    def corrupt_block_2(segments, outputs, **kwargs):
        # rows damaged after the runner checked them (not a cell the model cannot embed)
        block = result(segments, outputs, **kwargs)
        if segments[0].rows[0] == 32:
            block["obsm"]["X_scGPT"][3] = np.nan
        return block

    with monkeypatch.context() as patch:
        patch.setattr(atlas, "block_result", corrupt_block_2)
        with pytest.raises(ValueError, match="block 2.*not finite.*nonfinite="):
            model.embed_atlas(source, out, **RUN)
    assert 2 not in AtlasStore(out).done_blocks()
    model.embed_atlas(source, out, **RUN)  # the rerun repairs block 2
    assert AtlasStore(out).is_complete()
    _same(whole, out)


def _nan_for_cell(monkeypatch, row: int, precisions: tuple[str, ...], calls: list):
    """The model's step gives cell ``row`` a NaN embedding when run in ``precisions``."""
    segment = SCGPT._atlas_segment

    def patched(self, seg, column_ids, batch_codes, batch_size, precision, *args, **kwargs):
        emb, probs = segment(
            self, seg, column_ids, batch_codes, batch_size, precision, *args, **kwargs
        )
        skip = kwargs.get("skip")
        ran = np.ones(len(seg.rows), bool) if skip is None else ~skip
        calls.append((precision, seg.rows[ran].tolist()))
        hit = (seg.rows == row) & ran
        if precision in precisions and hit.any():
            emb[hit] = np.nan
            if probs is not None:
                probs[hit] = np.nan
        return emb, probs

    monkeypatch.setattr(SCGPT, "_atlas_segment", patched)


def test_a_cell_nan_in_bf16_is_recomputed_in_float32(model, source, tmp_path, monkeypatch):
    whole = ad.read_zarr(model.embed_atlas(source, tmp_path / "whole.zarr", **RUN))
    calls = []
    _nan_for_cell(monkeypatch, 37, ("bf16",), calls)
    out = model.embed_atlas(source, tmp_path / "o.zarr", precision="bf16", **RUN)
    result = ad.read_zarr(out)
    record = result.uns["scvi_scgpt_atlas"]
    assert record["complete"] and record["n_nonfinite_cells"] == 0
    assert len(record["nonfinite_cells"]) == 0
    assert ("32", [37]) in calls  # only that cell was run again, in float32
    emb = result.obsm["X_scGPT"]
    assert np.isfinite(emb).all()
    np.testing.assert_allclose(emb[37], whole.obsm["X_scGPT"][37], atol=1e-6)


@pytest.mark.parametrize("precision", ["32", "bf16"])
def test_a_cell_never_finite_gets_a_nan_row_listed_in_uns(
    model, source, tmp_path, monkeypatch, precision
):
    whole = ad.read_zarr(model.embed_atlas(source, tmp_path / "whole.zarr", **RUN))
    calls = []
    _nan_for_cell(monkeypatch, 37, ("32", "bf16"), calls)
    out = tmp_path / "o.zarr"
    model.embed_atlas(source, out, precision=precision, **RUN)
    result = ad.read_zarr(out)
    record = result.uns["scvi_scgpt_atlas"]
    assert record["complete"] and record["n_cells"] == 90
    assert list(record["nonfinite_cells"]) == ["cell37"] and record["n_nonfinite_cells"] == 1
    assert list(record["empty_cells"]) == []
    assert (("32", [37]) in calls) == (precision == "bf16")  # retried in float32 once
    emb = result.obsm["X_scGPT"]
    assert np.isnan(emb[37]).all()
    if precision == "32":
        others = np.delete(np.arange(90), 37)
        np.testing.assert_array_equal(emb[others], whole.obsm["X_scGPT"][others])
    # a resume of the complete store has nothing to do; the cell stays listed
    assert model.embed_atlas(source, out, precision=precision, **RUN) == str(out)


def test_data_lost_after_its_marker_is_repaired_by_a_rerun(model, source, tmp_path):
    import zarr

    whole = model.embed_atlas(source, tmp_path / "whole.zarr", **RUN)
    out = tmp_path / "o.zarr"
    failing = FailingSource(source)
    failing.fail_at = 4
    with pytest.raises(Killed):
        model.embed_atlas(failing, out, **RUN)
    assert AtlasStore(out).done_blocks() == {0, 1, 2, 3}
    root = zarr.open_group(str(out), mode="r+", zarr_format=2)
    root["obsm"]["X_scGPT"][20:24] = np.nan  # block 1 lost rows after its marker
    with pytest.raises(RuntimeError, match=r"block.*\[1\]"):
        model.embed_atlas(source, out, **RUN)
    assert 1 not in AtlasStore(out).done_blocks()  # its marker is removed...
    model.embed_atlas(source, out, **RUN)  # ...so the next run writes it again
    assert AtlasStore(out).is_complete()
    _same(whole, out)


def _with_empty_cells(cells):
    """Cells 5 and 40 express nothing; cell 70 only a gene outside the vocabulary."""
    X = cells.X.tolil()
    for i in (5, 40, 70):
        X[i, :] = 0
    X = sp.hstack([X.tocsr(), sp.csr_matrix((cells.n_obs, 1), dtype=np.float32)]).tolil()
    X[70, cells.n_vars] = 3.0
    out = ad.AnnData(sp.csr_matrix(X, dtype=np.float32), obs=cells.obs.copy(), var=None)
    out.var_names = [*cells.var_names, "NOT_A_GENE"]
    return out


def test_empty_cells_get_nan_rows_listed_in_uns(model, cells, tmp_path):
    data = _with_empty_cells(cells)
    data.write_h5ad(tmp_path / "cells.h5ad")
    failing = FailingSource(tmp_path / "cells.h5ad")
    failing.fail_at = 3  # block 0 (with cell5) is written, then the run dies
    with pytest.raises(Killed):
        model.embed_atlas(failing, tmp_path / "o.zarr", **RUN)
    out = model.embed_atlas(tmp_path / "cells.h5ad", tmp_path / "o.zarr", **RUN)
    result = ad.read_zarr(out)
    record = result.uns["scvi_scgpt_atlas"]
    assert record["complete"] and record["n_cells"] == 90
    assert list(record["empty_cells"]) == ["cell5", "cell40", "cell70"]
    emb = result.obsm["X_scGPT"]
    empty = np.isin(np.arange(90), [5, 40, 70])
    assert np.isnan(emb[empty]).all() and np.isfinite(emb[~empty]).all()
    reference = data[~empty].copy()
    SCGPT.setup_anndata(reference)
    assert np.abs(emb[~empty] - model.get_latent_representation(reference)).max() <= 1e-6
    with pytest.raises(ValueError, match="no expressed gene"):
        model.embed_atlas(
            tmp_path / "cells.h5ad", tmp_path / "strict.zarr", empty_cells="raise", **RUN
        )


def test_blocks_are_listed_once_not_after_every_block(model, source, tmp_path, monkeypatch):
    listings = []
    for name in ("listdir", "scandir"):
        real = getattr(os, name)

        def spy(path=".", _real=real):
            if str(path).rstrip("/").endswith(BLOCKS_DIR):
                listings.append(str(path))
            return _real(path)

        monkeypatch.setattr(os, name, spy)
    model.embed_atlas(source, tmp_path / "o.zarr", block_size=8, progress_bar=True)
    assert AtlasStore(tmp_path / "o.zarr").is_complete()
    assert len(listings) <= 2, f"{len(listings)} listings of the marker folder for 12 blocks"
