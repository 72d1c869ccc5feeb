"""The ``scvi-scgpt embed`` command: 1 and 2 CPU processes, official folders, kill and resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import anndata as ad
import numpy as np
import pytest

from scvi_scgpt import SCGPT
from scvi_scgpt.data import AtlasStore
from tests._builders import ATLAS_TINY, make_counts

TINY = ATLAS_TINY
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _cli(*args, cwd, check=True, timeout=300, progress=False):
    cmd = [sys.executable, "-m", "scvi_scgpt", "embed", *map(str, args)]
    cmd += [] if progress else ["--no-progress-bar"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=cwd, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture
def saved(tmp_path):
    cells = make_counts(150, n_batches=2)
    SCGPT.setup_anndata(cells)
    model = SCGPT(cells, **TINY)
    model.save(tmp_path / "model")
    cells.write_h5ad(tmp_path / "cells.h5ad")
    return model, cells


def test_two_cpu_processes_give_the_one_process_output(saved, tmp_path):
    model, cells = saved
    one = model.embed_atlas(tmp_path / "cells.h5ad", tmp_path / "one.zarr", block_size=16)
    proc = _cli(tmp_path / "model", tmp_path / "cells.h5ad", tmp_path / "two.zarr",
                "--devices", "2", "--accelerator", "cpu", "--block-size", "16",
                "--obs-columns", "batch", cwd=tmp_path, progress=True)  # fmt: skip
    assert "150/150" in proc.stderr  # rank 0's bar ends at every cell, both processes'
    a, b = ad.read_zarr(one), ad.read_zarr(tmp_path / "two.zarr")
    assert np.abs(a.obsm["X_scGPT"] - b.obsm["X_scGPT"]).max() <= 1e-6
    assert list(b.obs_names) == list(cells.obs_names)  # every cell once, in source order
    assert list(b.obs["batch"]) == list(cells.obs["batch"].astype(str))
    record = b.uns["scvi_scgpt_atlas"]
    assert record["complete"] and record["n_cells"] == 150 and record["world_size"] == 2
    writers = AtlasStore(tmp_path / "two.zarr").block_writers()
    assert sorted(writers) == list(range(10))  # 150 cells / 16: ten blocks, each once
    assert set(writers.values()) == {"rank 0", "rank 1"}  # both processes wrote blocks


def test_official_model_folder(saved, tmp_path):
    model, cells = saved
    model.save_pretrained(tmp_path / "official")
    _cli(tmp_path / "official", tmp_path / "cells.h5ad", tmp_path / "o.zarr",
         "--accelerator", "cpu", "--devices", "1", cwd=tmp_path)  # fmt: skip
    adata = cells.copy()
    SCGPT.setup_anndata(adata)
    pretrained = SCGPT.from_pretrained(tmp_path / "official", adata)
    expected = pretrained.get_latent_representation(adata)
    assert np.abs(ad.read_zarr(tmp_path / "o.zarr").obsm["X_scGPT"] - expected).max() <= 1e-6
    bad = _cli(tmp_path / "cells.h5ad", tmp_path / "cells.h5ad", tmp_path / "x.zarr",
               cwd=tmp_path, check=False)  # fmt: skip
    assert bad.returncode != 0 and "neither a folder written by SCGPT.save" in bad.stderr


def test_killed_run_resumes_to_the_uninterrupted_output(tmp_path):
    cells = make_counts(1500, n_batches=2, seed=3)
    SCGPT.setup_anndata(cells)
    model = SCGPT(cells, **TINY)
    model.save(tmp_path / "model")
    cells.write_h5ad(tmp_path / "cells.h5ad")
    whole = tmp_path / "whole.zarr"  # the same command, uninterrupted (same thread count)
    _cli(tmp_path / "model", tmp_path / "cells.h5ad", whole, "--accelerator", "cpu",
         "--devices", "1", "--block-size", "16", cwd=tmp_path)  # fmt: skip
    out = tmp_path / "killed.zarr"
    cmd = [sys.executable, "-m", "scvi_scgpt", "embed", str(tmp_path / "model"),
           str(tmp_path / "cells.h5ad"), str(out), "--accelerator", "cpu", "--devices", "1",
           "--block-size", "16", "--no-progress-bar"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=ENV, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    store = AtlasStore(out)
    deadline = time.time() + 240
    while time.time() < deadline and len(store.done_blocks()) < 5 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = store.done_blocks()
    assert 5 <= len(done) < 94, "the run was not killed part-way"
    assert not ad.read_zarr(out).uns["scvi_scgpt_atlas"]["complete"]
    _cli(tmp_path / "model", tmp_path / "cells.h5ad", out, "--accelerator", "cpu",
         "--devices", "1", "--block-size", "16", cwd=tmp_path)  # fmt: skip
    a, b = ad.read_zarr(whole), ad.read_zarr(out)
    np.testing.assert_array_equal(a.obsm["X_scGPT"], b.obsm["X_scGPT"])
    assert list(a.obs_names) == list(b.obs_names)
    assert b.uns["scvi_scgpt_atlas"]["complete"] and b.uns["scvi_scgpt_atlas"]["n_cells"] == 1500
