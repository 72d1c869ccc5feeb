"""tl.measured_modalities: which modalities each cell of a MuData was measured in."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scvi_scgpt import tl
from tests._builders import make_mudata

warnings.filterwarnings("ignore", category=FutureWarning)


def test_paired_cells_are_measured_in_every_modality():
    mdata = make_mudata()
    measured = tl.measured_modalities(mdata)
    assert isinstance(measured.dtype, pd.CategoricalDtype)
    assert measured.index.equals(mdata.obs_names)
    assert list(measured.cat.categories) == ["prot+rna"]
    assert (measured == "prot+rna").all()


def test_mosaic_cells_absent_or_all_zero_are_not_measured():
    mdata = make_mudata(protein_cells=30)
    x = mdata.mod["rna"].X.tolil()
    x[5, :] = 0  # an all-zero RNA row: cell 5 was measured in proteins only
    mdata.mod["rna"].X = x.tocsr()
    before = (list(mdata.obs.columns), {k: list(a.obs.columns) for k, a in mdata.mod.items()})
    measured = tl.measured_modalities(mdata)
    assert before == (
        list(mdata.obs.columns),
        {k: list(a.obs.columns) for k, a in mdata.mod.items()},
    )
    expected = np.where(np.arange(mdata.n_obs) < 30, "prot+rna", "rna").astype(object)
    expected[5] = "prot"
    np.testing.assert_array_equal(measured.to_numpy().astype(str), expected.astype(str))
    assert list(measured.cat.categories) == ["prot+rna", "prot", "rna"]


def test_dense_matrix_and_cells_measured_in_nothing():
    mdata = make_mudata(protein_cells=30)
    mdata.mod["rna"].X = mdata.mod["rna"].X.toarray()
    mdata.mod["rna"].X[40] = 0
    measured = tl.measured_modalities(mdata)
    assert measured.iloc[40] == "none"
    assert measured.cat.categories[-1] == "none"


def test_setup_style_mapping_selects_modalities():
    mdata = make_mudata(n_peaks=30, protein_cells=20)
    both = tl.measured_modalities(
        mdata, {"rna_layer": "rna", "atac_layer": "atac", "batch_key": "rna"}
    )
    assert set(both.cat.categories) == {"atac+rna"}
    three = tl.measured_modalities(mdata)
    assert set(three.cat.categories) == {"atac+prot+rna", "atac+rna"}


def test_bad_modalities_raise():
    mdata = make_mudata()
    with pytest.raises(ValueError, match="not in mdata.mod"):
        tl.measured_modalities(mdata, {"rna_layer": "rna", "protein_layer": "adt"})
    with pytest.raises(ValueError, match="names no modality"):
        tl.measured_modalities(mdata, {"batch_key": "rna"})
    with pytest.raises(TypeError, match="must be a dict"):
        tl.measured_modalities(mdata, ["rna", "prot"])


def test_drives_the_batch_key_of_setup_mudata():
    from scvi_scgpt import SCGPT

    mdata = make_mudata(protein_cells=30)
    mdata.obs["measured"] = tl.measured_modalities(mdata)
    SCGPT.setup_mudata(
        mdata, batch_key="measured", modalities={"rna_layer": "rna", "protein_layer": "prot"}
    )
    codes = mdata.obs["_scvi_batch"].to_numpy()
    assert len(set(codes[:30])) == 1 and len(set(codes[30:])) == 1 and codes[0] != codes[-1]


def test_module_does_not_import_the_model():
    source = Path(tl._modalities.__file__).read_text()
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    ]
    assert not [m for m in imported if m and m.startswith("scvi_scgpt")]
