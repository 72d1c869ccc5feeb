"""Output obs columns: dtypes from the source's schema, missing values kept, no lossy cast."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from tests._builders import ATLAS_RUN, ATLAS_TINY, make_counts

TINY = ATLAS_TINY
RUN = ATLAS_RUN


@pytest.fixture
def cells():
    cells = make_counts(90, n_batches=2)
    n = cells.n_obs
    count = pd.array(np.arange(n), dtype="Int64")
    count[[50, 71]] = pd.NA  # the first block has no missing value
    flag = pd.array(np.arange(n) % 2 == 0, dtype="boolean")
    flag[60] = pd.NA
    cells.obs["count"] = count
    cells.obs["flag"] = flag
    cells.obs["depth"] = np.arange(n, dtype=np.int64) * 7
    cells.obs["score"] = np.linspace(0, 1, n)
    return cells


COLUMNS = ["count", "flag", "depth", "score", "cell_type"]


@pytest.mark.parametrize("kind", ["h5ad", "memory"])
def test_nullable_columns_keep_their_missing_values(model, cells, tmp_path, kind):
    if kind == "h5ad":
        cells.write_h5ad(tmp_path / "cells.h5ad")
        source = tmp_path / "cells.h5ad"
    else:
        source = cells
    out = model.embed_atlas(source, tmp_path / "o.zarr", obs_columns=COLUMNS, **RUN)
    obs = ad.read_zarr(out).obs
    assert str(obs["count"].dtype) == "Int64" and str(obs["flag"].dtype) == "boolean"
    pd.testing.assert_series_equal(obs["count"], cells.obs["count"], check_index=False)
    pd.testing.assert_series_equal(obs["flag"], cells.obs["flag"], check_index=False)
    np.testing.assert_array_equal(obs["depth"], cells.obs["depth"])
    np.testing.assert_array_equal(obs["score"], cells.obs["score"])
    assert list(obs["cell_type"]) == list(cells.obs["cell_type"].astype(str))


def test_collection_columns_stored_differently(model, cells, tmp_path):
    first, second = cells[:40].copy(), cells[40:].copy()
    second.obs["depth"] = second.obs["depth"].astype(np.float64) + 0.5  # int, then float
    first.obs["count"] = first.obs["count"].astype(np.float64)  # float with NaN, then Int64
    first.obs["flag"] = np.ones(40, dtype=bool)  # bool, then nullable boolean
    first.write_h5ad(tmp_path / "a.h5ad")
    second.write_h5ad(tmp_path / "b.h5ad")
    files = [tmp_path / "a.h5ad", tmp_path / "b.h5ad"]
    out = model.embed_atlas(files, tmp_path / "o.zarr", obs_columns=COLUMNS, **RUN)
    obs = ad.read_zarr(out).obs
    np.testing.assert_array_equal(
        obs["depth"], np.concatenate([first.obs["depth"], second.obs["depth"]])
    )
    assert obs["count"].dtype == np.float64  # promoted: missing values as NaN
    assert obs["count"].isna().tolist() == cells.obs["count"].isna().tolist()
    assert str(obs["flag"].dtype) == "boolean" and obs["flag"].isna().sum() == 1

    text = cells[40:].copy()
    text.obs["depth"] = text.obs["depth"].astype(str)  # numbers in one file, text in another
    text.write_h5ad(tmp_path / "c.h5ad")
    with pytest.raises(ValueError, match="obs column 'depth'.*int64.*str.*c.h5ad"):
        model.embed_atlas(
            [tmp_path / "a.h5ad", tmp_path / "c.h5ad"], tmp_path / "x.zarr",
            obs_columns=["depth"], **RUN,
        )  # fmt: skip
    assert not (tmp_path / "x.zarr").exists()
