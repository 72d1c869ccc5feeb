"""AtlasStore: blocks verified before their marker; completion that no kill can break."""

from __future__ import annotations

import os
import shutil

import anndata as ad
import numpy as np
import pytest

from scvi_scgpt.data import AtlasStore

N, BLOCK, D = 10, 4, 3


class Killed(Exception):
    """The process was killed here."""


def _store(path) -> AtlasStore:
    store = AtlasStore(path)
    store.create(
        n_obs=N,
        block_size=BLOCK,
        arrays={"X_emb": ((D,), "float32")},
        obs_columns={"label": "str"},
        settings={"model": "m"},
        uns={"model": "m", "complete": False},
    )
    return store


def _write(store, index, values=None):
    start, stop = index * BLOCK, min((index + 1) * BLOCK, N)
    rows = np.arange(start, stop)
    emb = np.ones((len(rows), D), np.float32) * rows[:, None] if values is None else values
    store.write_block(
        index,
        start,
        stop,
        cell_ids=np.array([f"c{i}" for i in rows], dtype=object),
        obsm={"X_emb": emb},
        obs={"label": np.array(["x"] * len(rows), dtype=object)},
    )


def test_a_block_is_verified_before_its_marker(tmp_path):
    store = _store(tmp_path / "s.zarr")
    bad = np.ones((BLOCK, D), np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="block 0.*not finite"):
        _write(store, 0, bad)
    with pytest.raises(ValueError, match="block 1.*shape"):
        _write(store, 1, np.ones((BLOCK, D + 1), np.float32))
    with pytest.raises(ValueError, match="block 2.*shape"):
        _write(store, 2, np.ones((BLOCK, D), np.float32))  # the last block has 2 rows
    assert store.done_blocks() == set()
    _write(store, 0)
    assert store.done_blocks() == {0}


#: The store's scratch folder: a change in it is invisible to readers of the store, so a
#: kill there is the same as a kill before it (skipping those kill points keeps this fast).
SCRATCH = ".scvi_scgpt_tmp"


def _kill_after(monkeypatch, n: int) -> list[int]:
    """Every file-system change after the first ``n`` raises :class:`Killed` instead."""
    import zarr.storage

    calls, quiet = [0], [0]

    def tick(*paths):
        # a change is visible unless it stays inside the scratch folder: a rename out of it
        # (into uns, or the completion file into the store) is a kill point too
        if quiet[0] or all(SCRATCH in str(p) for p in paths):
            return
        calls[0] += 1
        if calls[0] > n:
            raise Killed(f"killed before change {calls[0]}")

    for module, name in [(os, "replace"), (os, "rename"), (os, "unlink"), (os, "remove"),
                         (os, "rmdir"), (shutil, "rmtree")]:  # fmt: skip
        real = getattr(module, name)

        def wrapped(path, *args, _real=real, _name=name, **kwargs):
            tick(path, *(args[:1] if _name in ("replace", "rename") else ()))
            quiet[0] += 1  # what rmtree does inside is part of its one change
            try:
                return _real(path, *args, **kwargs)
            finally:
                quiet[0] -= 1

        monkeypatch.setattr(module, name, wrapped)
    for name in ("set", "delete", "delete_dir", "set_if_not_exists"):
        real = getattr(zarr.storage.LocalStore, name, None)
        if real is None:
            continue

        async def wrapped_async(self, key, *args, _real=real, **kwargs):
            tick(f"{self.root}/{key}")
            return await _real(self, key, *args, **kwargs)

        monkeypatch.setattr(zarr.storage.LocalStore, name, wrapped_async)
    return calls


def _finish_killed_at_each_step(tmp_path, monkeypatch, base, record):
    """Copies of ``base`` whose ``finish(record)`` is killed after 0, 1, 2, ... file-system
    changes: yields ``(n, path, store, finished, calls)`` until a run is not killed."""
    for n in range(200):
        path = tmp_path / f"copy{n}.zarr"
        shutil.copytree(base.path, path)
        store = AtlasStore(path)
        with monkeypatch.context() as patch:
            calls = _kill_after(patch, n)
            try:
                store.finish(record)
                finished = True
            except Killed:
                finished = False
        yield n, path, store, finished, calls
        shutil.rmtree(path)
        if finished:
            return


def test_no_kill_while_finishing_loses_the_record(tmp_path, monkeypatch):
    base = _store(tmp_path / "base.zarr")
    for index in range(3):
        _write(base, index)
    killed = _finish_killed_at_each_step(
        tmp_path, monkeypatch, base, {"complete": True, "n_cells": N}
    )
    for step in killed:
        _n, path, store, finished, calls = step
        # whatever the moment of the kill: the record is there, the state is readable
        complete = store.is_complete()
        record = ad.read_zarr(path).uns["scvi_scgpt_atlas"]
        assert record["model"] == "m" and bool(record["complete"]) in (True, False)
        if complete:
            assert record["complete"] and record["n_cells"] == N
        store.finish({"complete": True, "n_cells": N})  # the rerun finishes it
        assert store.is_complete()
        record = ad.read_zarr(path).uns["scvi_scgpt_atlas"]
        assert record["complete"] and record["n_cells"] == N
    assert finished and calls[0] >= 1


#: Two records of a finished store, whose ``empty_cells`` lists differ in length (another
#: layout: that entry cannot be replaced chunk by chunk).
OLD = {"n_cells": N, "world_size": 1, "empty_cells": np.array(["c1"], dtype=object)}
NEW = {"n_cells": N, "world_size": 2, "empty_cells": np.array(["c1", "c7"], dtype=object)}


def _which(record) -> str | None:
    """``"old"`` / ``"new"``: the record is wholly one of them; ``None``: a mix of both."""
    for name, full in (("old", OLD), ("new", NEW)):
        if all(k in record for k in full) and record["world_size"] == full["world_size"]:
            if list(record["empty_cells"]) == list(full["empty_cells"]):
                return name
    return None


def test_no_kill_while_finishing_over_a_record_of_another_layout(tmp_path, monkeypatch):
    base = _store(tmp_path / "base.zarr")
    for index in range(3):
        _write(base, index)
    base.finish({**OLD, "complete": True})
    killed = _finish_killed_at_each_step(tmp_path, monkeypatch, base, {**NEW, "complete": True})
    for step in killed:
        n, path, store, finished, calls = step
        record = ad.read_zarr(path).uns["scvi_scgpt_atlas"]
        assert record["model"] == "m"
        # complete (to anndata, or by its file) only with a whole record, never a mix
        if record["complete"] or store.is_complete():
            assert _which(record) is not None, (n, dict(record))
        if finished:
            assert store.is_complete() and _which(record) == "new"
        store.finish({**NEW, "complete": True})  # the rerun finishes it
        record = ad.read_zarr(path).uns["scvi_scgpt_atlas"]
        assert store.is_complete() and record["complete"] and _which(record) == "new"
    assert finished and calls[0] >= 4


def test_the_completion_file_is_prepared_in_the_scratch_folder(tmp_path, monkeypatch):
    store = _store(tmp_path / "s.zarr")
    for index in range(3):
        _write(store, index)
    moves = []
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        moves.append((str(src), str(dst)))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    store.finish({"complete": True, "n_cells": N})
    (src, _dst), *_ = [m for m in moves if m[1].endswith(".scvi_scgpt_complete")]
    assert os.path.basename(os.path.dirname(src)) == SCRATCH
    assert not [n for n in os.listdir(store.path) if ".tmp" in n]


def test_a_block_that_does_not_read_back_raises_os_error(tmp_path, monkeypatch):
    import scvi_scgpt.data._atlas_store as atlas_store

    store = _store(tmp_path / "s.zarr")
    monkeypatch.setattr(atlas_store.np, "array_equal", lambda *a, **k: False)
    with pytest.raises(OSError, match="did not read back"):
        _write(store, 0)
    monkeypatch.undo()
    assert store.done_blocks() == set()
    assert "OSError" in AtlasStore.write_block.__doc__


def test_cells_listed_as_nonfinite_get_nan_rows_and_are_gathered(tmp_path):
    store = _store(tmp_path / "s.zarr")
    values = np.ones((BLOCK, D), np.float32)
    values[1] = np.inf
    values[2] = np.nan
    store.write_block(
        0,
        0,
        BLOCK,
        cell_ids=np.array([f"c{i}" for i in range(BLOCK)], dtype=object),
        obsm={"X_emb": values},
        obs={"label": np.array(["x"] * BLOCK, dtype=object)},
        empty=[2],
        nonfinite=[1],
    )
    assert store.block_record(0)["nonfinite"] == [1]
    _write(store, 1)
    _write(store, 2)
    from scvi_scgpt.data import BlockSpec

    blocks = [BlockSpec(i, i * BLOCK, min((i + 1) * BLOCK, N), ()) for i in range(3)]
    check = store.verify(blocks, "X_emb")
    assert check.bad == [] and check.empty_cells == ["c2"] and check.nonfinite_cells == ["c1"]
    emb = ad.read_zarr(store.path).obsm["X_emb"]
    assert np.isnan(emb[[1, 2]]).all() and np.isfinite(np.delete(emb, [1, 2], 0)).all()


def test_obs_values_a_column_cannot_hold_are_refused(tmp_path):
    store = AtlasStore(tmp_path / "s.zarr")
    store.create(
        n_obs=4,
        block_size=4,
        arrays={"X_emb": ((D,), "float32")},
        obs_columns={"n": "int64", "flag": "bool", "count": "Int64"},
        settings={"model": "m"},
        uns={"model": "m", "complete": False},
    )

    def write(**obs):
        values = {"n": np.arange(4), "flag": np.ones(4, bool), "count": np.arange(4.0), **obs}
        store.write_block(0, 0, 4, cell_ids=np.array(list("abcd"), dtype=object),
                          obsm={"X_emb": np.ones((4, D), np.float32)}, obs=values)  # fmt: skip

    with pytest.raises(ValueError, match="'n' \\(int64\\) received 1 missing"):
        write(n=np.array([1, 2, None, 4], dtype=object))
    with pytest.raises(ValueError, match="'n' \\(int64\\).*without loss.*1.5"):
        write(n=np.array([1.0, 1.5, 2.0, 3.0]))
    with pytest.raises(ValueError, match="'flag' \\(bool\\) received 1 missing"):
        write(flag=np.array([True, None, False, True], dtype=object))
    assert store.done_blocks() == set()
    write(count=np.array([1.0, np.nan, 3.0, 4.0]))
    obs = ad.read_zarr(store.path).obs
    assert obs["count"].isna().tolist() == [False, True, False, False]
    assert str(obs["count"].dtype) == "Int64" and obs["n"].dtype == np.int64
