"""embed_atlas: every source gives what embed gives, once per cell, resumably and safely."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from scvi_scgpt import SCGPT
from scvi_scgpt.data import AnnDataFileSource, AtlasStore
from tests._builders import (
    ATLAS_RUN,
    ATLAS_TINY,
    make_structured_counts,
    write_annbatch_collection,
    write_soma,
)

TINY = ATLAS_TINY
RUN = ATLAS_RUN


def _reference(model, adata):
    adata = adata.copy()
    SCGPT.setup_anndata(adata)
    return model.get_latent_representation(adata)


def _check_output(out, ids, reference, key="X_scGPT"):
    result = ad.read_zarr(out)
    assert list(result.obs_names) == list(ids)
    assert result.X.shape == (len(ids), 0)
    assert np.abs(result.obsm[key] - reference).max() <= 1e-6
    record = result.uns["scvi_scgpt_atlas"]
    assert record["complete"] and record["n_cells"] == len(ids)
    return result


@pytest.mark.parametrize("kind", ["h5ad", "zarr", "memory"])
def test_sources_embed_like_embed(model, cells, tmp_path, kind):
    if kind == "h5ad":
        source = tmp_path / "cells.h5ad"
        cells.write_h5ad(source)
    elif kind == "zarr":
        source = tmp_path / "cells.zarr"
        cells.write_zarr(source)
    else:
        source = cells
    out = model.embed_atlas(source, tmp_path / "out.zarr", obs_columns=["cell_type"], **RUN)
    result = _check_output(out, cells.obs_names, _reference(model, cells))
    assert list(result.obs["cell_type"]) == list(cells.obs["cell_type"].astype(str))
    assert "X_scGPT" not in cells.obsm  # the source is not modified


def test_collection_matches_genes_per_file(model, cells, tmp_path):
    first = cells[:40].copy()
    second = cells[40:, ::-1].copy()[:, 10:].copy()  # other gene order, fewer genes
    first.write_h5ad(tmp_path / "a.h5ad")
    second.write_zarr(tmp_path / "b.zarr")
    out = model.embed_atlas([tmp_path / "a.h5ad", tmp_path / "b.zarr"], tmp_path / "o.zarr", **RUN)
    reference = np.concatenate([_reference(model, first), _reference(model, second)])
    result = _check_output(out, cells.obs_names, reference)
    assert list(result.obs["source_part"].unique()) == [
        str(tmp_path / "a.h5ad"),
        str(tmp_path / "b.zarr"),
    ]


def test_soma_experiment_embeds_selected_cells(model, cells, tmp_path):
    write_soma(cells, tmp_path / "exp")
    out = model.embed_atlas(
        str(tmp_path / "exp"),
        tmp_path / "o.zarr",
        value_filter="cell_type != 't0'",
        obs_columns=["batch"],
        **RUN,
    )
    chosen = np.flatnonzero(cells.obs["cell_type"] != "t0")
    result = _check_output(out, [str(i) for i in chosen], _reference(model, cells[chosen]))
    assert list(result.obs["batch"]) == list(cells.obs["batch"].iloc[chosen].astype(str))


class FailingSource(AnnDataFileSource):
    """Dies while reading one block, as a killed process would."""

    fail_at: int | None = None

    def read_block(self, spec, obs_columns=()):
        if spec.index == self.fail_at:
            raise RuntimeError("the process died here")
        return super().read_block(spec, obs_columns)


def test_interrupted_run_resumes_to_the_same_output(model, cells, tmp_path):
    cells.write_h5ad(tmp_path / "cells.h5ad")
    whole = model.embed_atlas(tmp_path / "cells.h5ad", tmp_path / "whole.zarr", **RUN)
    source = FailingSource(tmp_path / "cells.h5ad")
    source.fail_at = 3
    with pytest.raises(RuntimeError, match="died here"):
        model.embed_atlas(source, tmp_path / "resumed.zarr", **RUN)
    store = AtlasStore(tmp_path / "resumed.zarr")
    assert store.done_blocks() == {0, 1, 2}
    assert not ad.read_zarr(tmp_path / "resumed.zarr").uns["scvi_scgpt_atlas"]["complete"]
    source.fail_at = None
    model.embed_atlas(source, tmp_path / "resumed.zarr", **RUN)
    a, b = ad.read_zarr(whole), ad.read_zarr(tmp_path / "resumed.zarr")
    np.testing.assert_array_equal(a.obsm["X_scGPT"], b.obsm["X_scGPT"])
    assert list(a.obs_names) == list(b.obs_names)
    assert b.uns["scvi_scgpt_atlas"]["complete"]


def test_existing_output_of_other_runs_is_refused(model, cells, tmp_path):
    cells.write_h5ad(tmp_path / "cells.h5ad")
    out = tmp_path / "o.zarr"
    model.embed_atlas(tmp_path / "cells.h5ad", out, **RUN)
    before = ad.read_zarr(out).obsm["X_scGPT"].copy()
    other = SCGPT(cells, seed=1, **{**TINY, "d_model": 16})
    with pytest.raises(ValueError, match="another model, source or settings.*model"):
        other.embed_atlas(tmp_path / "cells.h5ad", out, **RUN)
    with pytest.raises(ValueError, match="precision"):
        model.embed_atlas(tmp_path / "cells.h5ad", out, precision="bf16", **RUN)
    cells[:50].write_h5ad(tmp_path / "fewer.h5ad")
    with pytest.raises(ValueError, match="source"):
        model.embed_atlas(tmp_path / "fewer.h5ad", out, **RUN)
    with pytest.raises(FileExistsError, match="resume=True"):
        model.embed_atlas(tmp_path / "cells.h5ad", out, resume=False, **RUN)
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="not an scvi-scgpt atlas output"):
        model.embed_atlas(tmp_path / "cells.h5ad", tmp_path / "plain", **RUN)
    np.testing.assert_array_equal(ad.read_zarr(out).obsm["X_scGPT"], before)  # untouched
    # the same call again: complete already, nothing rewritten, same result
    model.embed_atlas(tmp_path / "cells.h5ad", out, **RUN)
    np.testing.assert_array_equal(ad.read_zarr(out).obsm["X_scGPT"], before)


def test_bad_input_is_named(model, cells, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model.embed_atlas(tmp_path / "missing.h5ad", tmp_path / "o.zarr", **RUN)
    foreign = cells.copy()
    foreign.var_names = [f"NOT_A_GENE_{i}" for i in range(foreign.n_vars)]
    foreign.write_h5ad(tmp_path / "foreign.h5ad")
    with pytest.raises(ValueError, match="foreign.h5ad"):
        model.embed_atlas(tmp_path / "foreign.h5ad", tmp_path / "o.zarr", **RUN)
    cells.write_h5ad(tmp_path / "cells.h5ad")
    with pytest.raises(ValueError, match="obs columns \\['nope'\\]"):
        model.embed_atlas(tmp_path / "cells.h5ad", tmp_path / "o.zarr", obs_columns=["nope"])
    with pytest.raises(ValueError, match="no classifier"):
        model.embed_atlas(tmp_path / "cells.h5ad", tmp_path / "o.zarr", labels_key_added="ct")
    assert not (tmp_path / "o.zarr").exists()


def test_labels_and_batches_at_atlas_scale(tmp_path):
    adata = make_structured_counts(120, 60)
    SCGPT.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    model = SCGPT(adata, n_cls=3, use_batch_labels=True, **TINY)
    model.train("annotation", max_epochs=1, batch_size=32, n_top_genes=None)
    adata.write_h5ad(tmp_path / "cells.h5ad")
    out = model.embed_atlas(
        tmp_path / "cells.h5ad", tmp_path / "o.zarr", labels_key_added="pred", **RUN
    )
    result = ad.read_zarr(out)
    expected = model.predict(adata, return_probabilities=True)
    assert list(result.obs["pred"]) == list(expected.columns[expected.to_numpy().argmax(1)])
    np.testing.assert_allclose(
        result.obs["pred_confidence"], expected.to_numpy().max(1), atol=1e-5
    )
    np.testing.assert_allclose(
        result.obsm["X_scGPT"], model.get_latent_representation(adata), atol=1e-6
    )
    unknown = adata.copy()
    unknown.obs["batch"] = unknown.obs["batch"].cat.rename_categories(["x", "y"])
    unknown.write_h5ad(tmp_path / "unknown.h5ad")
    with pytest.raises(ValueError, match="batches the model was not trained on"):
        model.embed_atlas(tmp_path / "unknown.h5ad", tmp_path / "u.zarr", **RUN)


def test_annbatch_collection_embeds_like_embed(model, cells, tmp_path):
    cells[:50].write_h5ad(tmp_path / "a.h5ad")
    cells[50:].write_h5ad(tmp_path / "b.h5ad")
    write_annbatch_collection([tmp_path / "a.h5ad", tmp_path / "b.h5ad"], tmp_path / "c.zarr", 1)
    out = model.embed_atlas(tmp_path / "c.zarr", tmp_path / "o.zarr", **RUN)
    result = ad.read_zarr(out)
    order = cells.obs_names.get_indexer(result.obs_names)
    assert sorted(order) == list(range(cells.n_obs))
    assert np.abs(result.obsm["X_scGPT"] - _reference(model, cells)[order]).max() <= 1e-6
