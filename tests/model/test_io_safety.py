"""A saved model's JSON names no method and no attribute outside the allow-lists (issue #30)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scvi_scgpt import SCGPT
from scvi_scgpt.model._serialization import NOT_SAVED_ATTRS, SAVED_ATTRS
from tests._builders import make_counts

TINY = {"d_model": 16, "n_heads": 2, "d_hid": 32, "n_layers": 2, "dropout": 0.0}


@pytest.fixture
def saved(tmp_path, official_dir, official_cells):
    SCGPT.setup_anndata(official_cells)
    model = SCGPT.from_pretrained(official_dir / "zeroshot_model", official_cells)
    model.save(tmp_path / "saved")
    return tmp_path / "saved", official_cells, model


def _tamper(path, change) -> None:
    meta_path = path / "scvi_scgpt.json"
    meta = json.loads(meta_path.read_text())
    change(meta)
    meta_path.write_text(json.dumps(meta))


@pytest.mark.parametrize("method", ["save", "load", "from_pretrained", "__init__", "train"])
def test_a_saved_setup_method_other_than_setup_anndata_or_mudata_is_refused(saved, method):
    path, cells, _ = saved
    _tamper(path, lambda meta: meta["registry"].update(setup_method_name=method))
    with pytest.raises(ValueError, match=f"setup method {method!r}.*setup_anndata"):
        SCGPT.load(path, cells.copy())


@pytest.mark.parametrize("attr", ["evil_", "module", "adata_manager", "__class__", "vocab_"])
def test_a_saved_attribute_outside_the_allow_list_is_refused(saved, attr):
    path, cells, _ = saved
    _tamper(path, lambda meta: meta["attrs"].update({attr: "x"}))
    with pytest.raises(ValueError, match=f"attribute.*{attr!r}"):
        SCGPT.load(path, cells.copy())


def test_an_untampered_save_still_loads(saved):
    path, cells, model = saved
    loaded = SCGPT.load(path, cells.copy())
    np.testing.assert_array_equal(
        loaded.get_latent_representation(), model.get_latent_representation()
    )
    assert loaded.is_trained_


def test_save_writes_exactly_the_allow_listed_attributes(tmp_path):
    adata = make_counts()
    SCGPT.setup_anndata(adata)
    model = SCGPT(adata, **TINY)
    model.train(max_epochs=1, batch_size=16)
    public = {k for k in vars(model) if k.endswith("_") and not k.startswith("_")}
    # every attribute a model has is either saved or deliberately not (a new one needs a choice)
    assert public <= set(SAVED_ATTRS) | set(NOT_SAVED_ATTRS), public - set(SAVED_ATTRS)
    model.save(tmp_path / "saved")
    meta = json.loads((tmp_path / "saved" / "scvi_scgpt.json").read_text())
    assert set(meta["attrs"]) == public & set(SAVED_ATTRS)
    assert "training_task_" in meta["attrs"] and "history_" in meta["attrs"]
    loaded = SCGPT.load(tmp_path / "saved", adata.copy())
    assert loaded.training_task_["task"] == model.training_task_["task"] == "gep"
    assert loaded.train_indices_.tolist() == model.train_indices_.tolist()


def test_saves_of_earlier_versions_still_load(saved):
    """Earlier saves wrote scvi-tools' ``get_normalized_function_name_``: its default loads."""
    path, cells, _ = saved
    key = "get_normalized_function_name_"
    _tamper(path, lambda meta: meta["attrs"].update({key: "get_normalized_expression"}))
    assert SCGPT.load(path, cells.copy()).is_trained_
    _tamper(path, lambda meta: meta["attrs"].update({key: "save"}))
    with pytest.raises(ValueError, match=f"attribute.*{key!r}"):
        SCGPT.load(path, cells.copy())
