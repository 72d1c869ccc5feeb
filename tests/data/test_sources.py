"""The cell-source layer: every kind yields the same cells, by blocks, never altered."""

from __future__ import annotations

import hashlib

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scvi_scgpt.data import (
    AnnDataFileSource,
    InMemorySource,
    SomaSource,
    is_soma_uri,
    open_source,
)
from tests._builders import make_counts, write_annbatch_collection, write_soma


def _digest(path):
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture
def cells():
    adata = make_counts(70, n_batches=2)
    adata.obs["n_genes"] = np.diff(adata.X.indptr)
    adata.obs["score"] = np.linspace(0, 1, adata.n_obs)
    return adata


def _all_rows(source, block_size=16):
    blocks = [b for spec in source.blocks(block_size) for b in source.read_block(spec, ())]
    return sp.vstack([b.X for b in blocks]).toarray(), np.concatenate([b.cell_ids for b in blocks])


@pytest.mark.parametrize("kind", ["h5ad", "zarr2", "zarr3"])
def test_file_sources_read_every_cell_once(cells, tmp_path, kind):
    if kind == "h5ad":
        path = tmp_path / "cells.h5ad"
        cells.write_h5ad(path)
    else:
        path = tmp_path / "cells.zarr"
        with ad.settings.override(zarr_write_format=int(kind[-1])):
            cells.write_zarr(path)
    before = _digest(path)
    source = open_source(path)
    assert source.kind == ("h5ad" if kind == "h5ad" else "zarr")
    assert source.n_obs == 70 and list(source.parts[0].gene_names) == list(cells.var_names)
    X, ids = _all_rows(source)
    np.testing.assert_array_equal(X, cells.X.toarray())
    assert list(ids) == list(cells.obs_names)
    spec = source.blocks(32)[1]
    (block,) = source.read_block(spec, ["cell_type", "n_genes", "score"])
    np.testing.assert_array_equal(block.rows, np.arange(32, 64))
    assert list(block.obs["cell_type"]) == list(cells.obs["cell_type"].iloc[32:64].astype(str))
    np.testing.assert_array_equal(block.obs["n_genes"], cells.obs["n_genes"].iloc[32:64])
    np.testing.assert_allclose(block.obs["score"], cells.obs["score"].iloc[32:64])
    source.close()
    assert _digest(path) == before  # never modified


def test_collection_parts_keep_their_own_genes(cells, tmp_path):
    first, second = cells[:30].copy(), cells[30:, ::-1].copy()  # reversed gene order
    second = second[:, 5:].copy()  # and fewer genes
    first.write_h5ad(tmp_path / "a.h5ad")
    second.write_zarr(tmp_path / "b.zarr")
    source = open_source([tmp_path / "a.h5ad", tmp_path / "b.zarr"])
    assert source.kind == "collection" and source.n_obs == 70
    assert [p.offset for p in source.parts] == [0, 30]
    assert list(source.parts[1].gene_names) == list(second.var_names)
    specs = source.blocks(16)
    # global blocks: block 1 (rows 16-32) spans both files
    assert specs[1].segments == ((0, 16, 30), (1, 0, 2))
    assert sum(s.n_cells for s in specs) == 70
    segs = source.read_block(specs[1])
    np.testing.assert_array_equal(np.concatenate([s.rows for s in segs]), np.arange(16, 32))
    np.testing.assert_array_equal(segs[1].X.toarray(), second.X[:2].toarray())
    within = source.blocks(16, within_parts=True)
    assert all(len(s.segments) == 1 for s in within)
    assert sum(s.n_cells for s in within) == 70


def test_soma_source_filters_and_keys_cells_by_joinid(cells, tmp_path):
    uri = write_soma(cells, tmp_path / "exp")
    assert is_soma_uri(uri) and not is_soma_uri(tmp_path)
    source = open_source(uri, value_filter="cell_type == 't1'")
    assert isinstance(source, SomaSource)
    chosen = np.flatnonzero(cells.obs["cell_type"] == "t1")
    assert source.n_obs == len(chosen)
    X, ids = _all_rows(source, block_size=7)
    np.testing.assert_array_equal(X, cells.X[chosen].toarray())
    assert list(ids) == [str(i) for i in chosen]  # soma_joinid = row in from_anndata
    (block,) = source.read_block(source.blocks(100)[0], ["batch", "n_genes"])
    assert list(block.obs["batch"]) == list(cells.obs["batch"].iloc[chosen].astype(str))
    np.testing.assert_array_equal(block.obs["n_genes"], cells.obs["n_genes"].iloc[chosen])
    assert list(source.parts[0].gene_names) == list(cells.var_names)  # var_id column


def test_soma_bad_input_is_named(cells, tmp_path):
    uri = write_soma(cells, tmp_path / "exp")
    with pytest.raises(ValueError, match="no measurement 'ATAC'.*'RNA'"):
        open_source(uri, measurement="ATAC")
    with pytest.raises(ValueError, match="no X layer 'counts'.*'data'"):
        open_source(uri, layer="counts")
    with pytest.raises(ValueError, match="selects no cell"):
        open_source(uri, value_filter="cell_type == 'nothing'")
    with pytest.raises(ValueError, match="could not be applied"):
        open_source(uri, value_filter="no_such_column == 3")
    with pytest.raises(ValueError, match="no column 'symbol'"):
        open_source(uri, gene_symbols_key="symbol")


def test_file_bad_input_is_named(cells, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_source(tmp_path / "missing.h5ad")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not an .h5ad"):
        open_source(tmp_path / "notes.txt")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="not a zarr store"):
        open_source(tmp_path / "empty_dir")
    (tmp_path / "broken.h5ad").write_text("not hdf5")
    with pytest.raises(ValueError, match="not a readable .h5ad"):
        open_source(tmp_path / "broken.h5ad")
    cells.write_h5ad(tmp_path / "ok.h5ad")
    with pytest.raises(ValueError, match="no layer 'counts'"):
        open_source(tmp_path / "ok.h5ad", layer="counts")
    with pytest.raises(ValueError, match="value_filter applies to TileDB-SOMA"):
        open_source(tmp_path / "ok.h5ad", value_filter="a == 1")
    repeated = cells.copy()
    repeated.obs_names = ["same"] * 35 + [f"c{i}" for i in range(35)]
    repeated.write_h5ad(tmp_path / "repeated.h5ad")
    with pytest.raises(ValueError, match="cell ids .* repeat.*obs_names_make_unique"):
        open_source(tmp_path / "repeated.h5ad")
    csc = cells.copy()
    csc.X = csc.X.tocsc()
    csc.write_h5ad(tmp_path / "csc.h5ad")
    with pytest.raises(ValueError, match="column-major"):
        open_source(tmp_path / "csc.h5ad")
    negative = cells.copy()
    negative.X = negative.X.copy()
    negative.X.data[5] = -1.0
    negative.write_h5ad(tmp_path / "negative.h5ad")
    source = open_source(tmp_path / "negative.h5ad")
    with pytest.raises(ValueError, match="negative.h5ad.*negative values"):
        source.read_block(source.blocks(100)[0])


def test_sources_pickle_without_open_handles(cells, tmp_path):
    import pickle

    cells.write_h5ad(tmp_path / "cells.h5ad")
    source = AnnDataFileSource(tmp_path / "cells.h5ad")
    source.read_range(0, 0, 5)  # opens the file in this process
    clone = pickle.loads(pickle.dumps(source))
    assert clone._handles == {}
    np.testing.assert_array_equal(clone.read_range(0, 3, 9).toarray(), cells.X[3:9].toarray())
    source.close()


def test_obs_dtypes_come_from_the_schema(cells, tmp_path):
    from scvi_scgpt.data import CellSource

    cells.obs["count"] = pd.array(np.arange(70), dtype="Int64")
    cells.obs.loc[cells.obs_names[50], "count"] = pd.NA  # not in the first rows
    cells.write_h5ad(tmp_path / "cells.h5ad")
    source = open_source(tmp_path / "cells.h5ad")
    columns = ["n_genes", "score", "cell_type", "count"]
    expected = {"n_genes": "int64", "score": "float64", "cell_type": "str", "count": "Int64"}
    assert source.obs_dtypes(columns) == expected
    memory = InMemorySource(cells.X, cells.obs_names, cells.var_names, cells.obs)
    assert memory.obs_dtypes(columns) == expected
    # sources without a schema: inferred from each part's first rows
    assert CellSource.obs_dtypes(source, ["n_genes", "score", "cell_type"]) == {
        "n_genes": "int64", "score": "float64", "cell_type": "str"
    }  # fmt: skip


def test_in_memory_source_and_fingerprint(cells):
    source = InMemorySource(cells.X, cells.obs_names, cells.var_names, cells.obs)
    np.testing.assert_array_equal(
        source.read_rows(0, np.array([2, 5])).toarray(), cells.X[[2, 5]].toarray()
    )
    other = InMemorySource(cells.X, [f"x{i}" for i in range(70)], cells.var_names)
    assert source.fingerprint() != other.fingerprint()
    assert (
        source.fingerprint()
        == InMemorySource(cells.X, cells.obs_names, cells.var_names).fingerprint()
    )
    with pytest.raises(ValueError, match="not in every part"):
        source.check_obs_columns(["cell_type", "missing"])
    assert isinstance(pd.Series(source.obs_values(0, "cell_type", 0, 3))[0], str)


def test_annbatch_collection_is_read_with_its_loader(cells, tmp_path):
    from scvi_scgpt.data import AnnbatchSource, is_annbatch_collection

    cells[:40].write_h5ad(tmp_path / "a.h5ad")
    cells[40:].write_h5ad(tmp_path / "b.h5ad")
    collection = tmp_path / "collection.zarr"
    write_annbatch_collection([tmp_path / "a.h5ad", tmp_path / "b.h5ad"], collection)
    assert is_annbatch_collection(collection) and not is_annbatch_collection(tmp_path)
    source = open_source(collection)
    assert isinstance(source, AnnbatchSource) and source.n_obs == 70
    assert len(source.dataset_n_obs) >= 2  # several datasets: global rows span them
    X, ids = _all_rows(source, block_size=16)
    order = cells.obs_names.get_indexer(ids)
    assert sorted(order) == list(range(70))  # every cell once, shuffled by annbatch
    np.testing.assert_array_equal(X, cells.X[order].toarray())
    (block,) = source.read_block(source.blocks(32)[1], ["cell_type"])
    assert list(block.obs["cell_type"]) == list(cells.obs["cell_type"].astype(str)[order[32:64]])
    with pytest.raises(ValueError, match="layer= does not apply"):
        open_source(collection, layer="counts")
