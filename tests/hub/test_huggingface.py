"""Hub layout: a trained model round-trips through a local hub-format folder and the hub cache."""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings

import numpy as np
import pytest
import scvi
import torch

from scvi_scgpt import SCGPT
from scvi_scgpt.hub import write_hub_folder
from tests._builders import make_structured_counts

QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


@pytest.fixture(scope="module")
def trained():
    scvi.settings.seed = 0
    adata = make_structured_counts(90, seed=3)
    SCGPT.setup_anndata(adata, labels_key="cell_type")
    model = SCGPT(adata, max_seq_len=64, d_model=16, n_heads=2, d_hid=16, n_layers=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train("annotation", max_epochs=2, batch_size=16, **QUIET)
    return model


def test_trained_model_round_trips_through_a_hub_folder(trained, tmp_path):
    folder = trained.write_hub_folder(
        tmp_path / "hub", save_anndata=True, description="tiny test model",
        metrics={"accuracy": 0.5}, training_data_url="https://example.org/cells.h5ad",
    )  # fmt: skip
    names = {p.name for p in folder.iterdir()}
    assert names == {"model.safetensors", "vocab.json", "scvi_scgpt.json", "adata.h5ad",
                     "_scvi_required_metadata.json", "README.md"}  # fmt: skip
    metadata = json.loads((folder / "_scvi_required_metadata.json").read_text())
    from scvi.hub import HubMetadata

    hub_fields = {f.name for f in dataclasses.fields(HubMetadata)}
    assert hub_fields <= set(metadata)  # scvi-tools' metadata fields, and ours
    assert (
        metadata["model_cls_name"] == "SCGPT" and metadata["model_parent_module"] == "scvi_scgpt"
    )
    card = (folder / "README.md").read_text()
    assert "model_cls_name:SCGPT" in card and "library_name: scvi-tools" in card
    assert "annotation" in card and "| accuracy | 0.5 |" in card
    loaded = SCGPT.load_hub_folder(folder)  # the AnnData comes with it
    np.testing.assert_array_equal(
        loaded.get_latent_representation(), trained.get_latent_representation()
    )
    np.testing.assert_array_equal(loaded.predict(trained.adata), trained.predict(trained.adata))


def test_official_format_hub_folder(trained, tmp_path):
    folder = write_hub_folder(trained, tmp_path / "official", format="official")
    names = {p.name for p in folder.iterdir()}
    assert names == {"args.json", "vocab.json", "best_model.pt",
                     "_scvi_required_metadata.json", "README.md"}  # fmt: skip
    with pytest.raises(ValueError, match="needs the AnnData"):
        SCGPT.load_hub_folder(folder)
    adata = trained.adata.copy()
    SCGPT.setup_anndata(adata, labels_key="cell_type")
    loaded = SCGPT.load_hub_folder(folder, adata)
    # the official format carries weights and architecture; tokenization is the loader's
    trained_state = trained.module.state_dict()
    for key, value in loaded.module.state_dict().items():
        assert torch.equal(value, trained_state[key]), key
    assert set(loaded.module.state_dict()) == set(trained_state)
    with pytest.raises(ValueError, match="save_anndata needs format='scvi'"):
        write_hub_folder(trained, tmp_path / "x", format="official", save_anndata=True)


def test_metadata_naming_another_class_or_module_is_refused(trained, tmp_path):
    folder = trained.write_hub_folder(tmp_path / "hub")
    meta_path = folder / "_scvi_required_metadata.json"
    metadata = json.loads(meta_path.read_text())
    for change in ({"model_parent_module": "os"}, {"model_cls_name": "SCVI"}):
        meta_path.write_text(json.dumps({**metadata, **change}))
        with pytest.raises(ValueError, match="only SCGPT models of scvi_scgpt"):
            SCGPT.load_hub_folder(folder, trained.adata)


def test_pull_reads_the_hub_cache_through_snapshot_download(trained, tmp_path):
    pytest.importorskip("huggingface_hub")
    folder = trained.write_hub_folder(tmp_path / "hub", save_anndata=True)
    # the documented hub cache layout: models--ORG--NAME/{refs,snapshots/COMMIT}
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "models--lab--tiny-scgpt"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    pulled = SCGPT.pull_from_huggingface_hub(
        "lab/tiny-scgpt", revision=commit, cache_dir=tmp_path / "hf", local_files_only=True
    )
    np.testing.assert_array_equal(
        pulled.get_latent_representation(), trained.get_latent_representation()
    )
