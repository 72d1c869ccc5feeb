"""One job per output: a lock taken before any check, refused jobs named, stale locks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import anndata as ad
import numpy as np
import pytest

from scvi_scgpt import SCGPT
from scvi_scgpt.data import AnnDataFileSource
from tests._builders import ATLAS_RUN, ATLAS_TINY, make_counts

TINY = ATLAS_TINY
RUN = ATLAS_RUN
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

#: The ``scvi-scgpt embed`` command started by two jobs at the same moment: each waits
#: after its imports until both are ready (files ``ready0``, ``ready1``), and the store's
#: creation is slowed down, so that both are past every check before either creates it.
DRIVER = """
import pathlib, sys, time
from scvi_scgpt.data import AtlasStore
from scvi_scgpt._cli import main
create = AtlasStore.create
def slow_create(self, **kwargs):
    time.sleep(3)
    return create(self, **kwargs)
AtlasStore.create = slow_create
pathlib.Path(f"ready{sys.argv[1]}").touch()
deadline = time.time() + 120
while not all(pathlib.Path(f"ready{i}").exists() for i in (0, 1)) and time.time() < deadline:
    time.sleep(0.01)
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture
def cells():
    return make_counts(48, n_batches=2)


def _model(cells, seed=0):
    adata = cells.copy()
    SCGPT.setup_anndata(adata)
    return SCGPT(adata, seed=seed, **TINY)


def _lock_file(out):
    return f"{out}.lock"


def test_two_jobs_on_one_output_one_is_refused(cells, tmp_path):
    cells.write_h5ad(tmp_path / "cells.h5ad")
    models = [_model(cells, seed) for seed in (0, 1)]
    for i, model in enumerate(models):
        model.save(tmp_path / f"model{i}")
    out = tmp_path / "o.zarr"
    jobs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                DRIVER,
                str(i),
                "embed",
                str(tmp_path / f"model{i}"),
                str(tmp_path / "cells.h5ad"),
                str(out),
                "--accelerator",
                "cpu",
                "--devices",
                "1",
                "--block-size",
                "16",
                "--no-progress-bar",
            ],
            env=ENV,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    results = [job.communicate(timeout=300) for job in jobs]
    codes = [job.returncode for job in jobs]
    assert sorted(codes)[0] == 0 and sorted(codes)[1] != 0, results
    winner = codes.index(0)
    loser_err = results[1 - winner][1]
    assert "is being written by" in loser_err and f"pid {jobs[winner].pid}" in loser_err, (
        loser_err[-3000:]
    )
    assert "Traceback" not in loser_err  # a clear message, not a crash
    result = ad.read_zarr(out)
    assert result.uns["scvi_scgpt_atlas"]["complete"]
    expected = models[winner].get_latent_representation(models[winner].adata)
    assert np.abs(result.obsm["X_scGPT"] - expected).max() <= 1e-6
    assert not os.path.exists(_lock_file(out))


def test_running_job_refuses_and_stale_lock_is_taken_over(cells, tmp_path):
    model = _model(cells)
    cells.write_h5ad(tmp_path / "cells.h5ad")
    out = tmp_path / "o.zarr"
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        holder = {"pid": alive.pid, "host": socket.gethostname(), "started": time.time(),
                  "model": "0123abcd"}  # fmt: skip
        with open(_lock_file(out), "w") as f:
            json.dump(holder, f)
        with pytest.raises(RuntimeError, match=f"being written by pid {alive.pid} on host"):
            model.embed_atlas(tmp_path / "cells.h5ad", out, **RUN)
        assert not out.exists()  # refused before anything was checked or written
    finally:
        alive.kill()
        alive.wait()
    # the holder died without releasing its lock: the next job takes it over
    model.embed_atlas(tmp_path / "cells.h5ad", out, **RUN)
    assert ad.read_zarr(out).uns["scvi_scgpt_atlas"]["complete"]
    assert not os.path.exists(_lock_file(out))


class FailingSource(AnnDataFileSource):
    def read_block(self, spec, obs_columns=()):
        if spec.index == 1:
            raise RuntimeError("the process died here")
        return super().read_block(spec, obs_columns)


def test_the_lock_is_released_on_error(cells, tmp_path):
    model = _model(cells)
    cells.write_h5ad(tmp_path / "cells.h5ad")
    out = tmp_path / "o.zarr"
    with pytest.raises(RuntimeError, match="died here"):
        model.embed_atlas(FailingSource(tmp_path / "cells.h5ad"), out, **RUN)
    assert not os.path.exists(_lock_file(out))
    model.embed_atlas(tmp_path / "cells.h5ad", out, **RUN)
    assert ad.read_zarr(out).uns["scvi_scgpt_atlas"]["complete"]


def test_an_output_spelled_with_a_trailing_slash_has_the_same_lock(cells, tmp_path):
    from scvi_scgpt.data import AtlasStore
    from scvi_scgpt.data._atlas_lock import OutputLock

    model = _model(cells)
    cells.write_h5ad(tmp_path / "cells.h5ad")
    out = tmp_path / "o.zarr"
    # a fresh run on "o.zarr/" works and leaves no lock (neither o.zarr/.lock nor o.zarr.lock)
    assert model.embed_atlas(tmp_path / "cells.h5ad", f"{out}/", **RUN) == f"{out}/"
    assert AtlasStore(out).is_complete()
    assert not os.path.exists(_lock_file(out)) and not (out / ".lock").exists()
    # a job holding "o.zarr/" refuses a job on "o.zarr", and the other way round
    for held, other in ((f"{out}/", out), (out, f"{out}/")):
        with OutputLock(held):
            with pytest.raises(RuntimeError, match=f"being written by pid {os.getpid()}"):
                model.embed_atlas(tmp_path / "cells.h5ad", other, **RUN)
