from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from scvi_scgpt import tl
from scvi_scgpt.datasets import read_gears, simulate_perturbseq


@pytest.fixture(scope="module")
def sim():
    return simulate_perturbseq(
        n_genes=30, n_regulators=6, n_doubles=4, n_control_cells=30, cells_per_perturbation=5
    )


def write_folder(sim, root):
    folder = root / "norman_tiny"
    (folder / "splits").mkdir(parents=True)
    stored = sim.copy()
    stored.var["gene_name"] = stored.var_names.to_numpy()
    stored.var_names = [f"ENSG{i:011d}" for i in range(stored.n_vars)]
    del stored.uns["grn"]  # a DataFrame in uns; GEARS files have none
    names = stored.obs.drop_duplicates("condition").set_index("condition")["condition_name"]
    ranked = {c: tl.rank_de_genes(sim, n_top=None)[c] for c in ["TF01+ctrl", "TF02+ctrl"]}
    ids = dict(zip(sim.var_names, stored.var_names))
    stored.uns["rank_genes_groups_cov_all"] = {
        names[c]: np.array([ids[g] for g in genes]) for c, genes in ranked.items()
    }
    stored.write_h5ad(folder / "perturb_processed.h5ad")
    split = tl.perturbation_split(sim, key_added=None)
    # GEARS' lists mix Python and NumPy strings (np.random.choice / np.setdiff1d outputs)
    sets = {
        "train": [np.str_(c) for c in split["train"]],
        "val": np.array(split["val"]),
        "test": list(split["test"]),
    }
    with open(folder / "splits" / "norman_tiny_simulation_1_0.75.pkl", "wb") as f:
        pickle.dump(sets, f)
    with open(folder / "splits" / "norman_tiny_simulation_1_0.75_subgroup.pkl", "wb") as f:
        pickle.dump({"test_subgroup": split["test_subgroup"]}, f)
    return folder, split


def test_read_gears_folder(sim, tmp_path):
    folder, split = write_folder(sim, tmp_path)
    adata = read_gears(folder)
    assert list(adata.var_names) == list(sim.var_names)  # symbols, as conditions use
    assert adata.var["gene_id"].iloc[0] == "ENSG00000000000"
    assert (adata.obs["condition"].astype(str) == sim.obs["condition"].astype(str)).all()
    expected = (
        sim.obs["condition"]
        .astype(str)
        .map({c: p for p in ("train", "val", "test") for c in split[p]})
    )
    assert (adata.obs["split"].astype(str) == expected).all()
    assert adata.uns["split_subgroup"]["test_subgroup"] == split["test_subgroup"]
    expected_de = tl.rank_de_genes(sim, conditions=["TF01+ctrl", "TF02+ctrl"], n_top=None)
    assert {c: list(g) for c, g in adata.uns["de_genes"].items()} == expected_de
    same = read_gears(folder / "perturb_processed.h5ad", split="norman_tiny_simulation_1_0.75.pkl")
    assert (same.obs["split"] == adata.obs["split"]).all()


def test_read_gears_json_split_and_no_split(sim, tmp_path):
    folder, split = write_folder(sim, tmp_path)
    (folder / "splits" / "custom.json").write_text(
        json.dumps({"train": split["train"], "test": split["test"] + split["val"]})
    )
    with pytest.raises(ValueError, match="Several split files"):
        read_gears(folder)
    adata = read_gears(folder, split="custom.json")
    assert set(adata.obs["split"].astype(str)) == {"train", "test"}
    for f in (folder / "splits").iterdir():
        f.unlink()
    assert "split" not in read_gears(folder).obs


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_unsafe_pickle_is_refused(sim, tmp_path):
    folder, _ = write_folder(sim, tmp_path)
    for f in (folder / "splits").iterdir():
        f.unlink()
    with open(folder / "splits" / "bad.pkl", "wb") as f:
        pickle.dump({"train": ["ctrl"], "test": [Evil()]}, f)
    with pytest.raises(ValueError, match="Refusing to load"):
        read_gears(folder)
    with open(folder / "splits" / "bad.pkl", "wb") as f:
        pickle.dump({"train": ["ctrl"]}, f)
    with pytest.raises(ValueError, match="lacks 'train' / 'test'"):
        read_gears(folder)


def test_missing_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="perturb_processed.h5ad"):
        read_gears(tmp_path)
