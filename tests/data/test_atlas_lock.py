"""OutputLock: one path per output, heartbeats for other hosts, safe takeovers, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from scvi_scgpt.data._atlas_lock import AtlasOutputLocked, OutputLock

STALE_ENV = "SCVI_SCGPT_LOCK_STALE_S"


def _write_lock(path, record, age_s: float = 0.0) -> None:
    path.write_text(record if isinstance(record, str) else json.dumps(record), encoding="utf-8")
    if age_s:
        then = time.time() - age_s
        os.utime(path, (then, then))


def _other_host(pid: int = 4242) -> dict:
    return {"pid": pid, "host": "another-node.example", "started": time.time(), "model": "m"}


def test_one_lock_per_output_whatever_its_spelling(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    spellings = [
        tmp_path / "real" / "o.zarr",
        f"{tmp_path / 'real' / 'o.zarr'}/",
        f"{tmp_path / 'real' / '.' / 'o.zarr'}",
        tmp_path / "link" / "o.zarr",
    ]
    paths = {OutputLock(s).path for s in spellings}
    assert paths == {tmp_path / "real" / "o.zarr.lock"}
    with OutputLock(f"{tmp_path / 'real' / 'o.zarr'}/"):
        assert not (tmp_path / "real" / "o.zarr").exists()  # nothing made inside the output
        with pytest.raises(AtlasOutputLocked, match="being written by pid"):
            OutputLock(tmp_path / "link" / "o.zarr").acquire()


def test_a_lock_of_another_host_without_heartbeat_is_stale(tmp_path, monkeypatch):
    monkeypatch.delenv(STALE_ENV, raising=False)
    lock = OutputLock(tmp_path / "o.zarr")
    _write_lock(lock.path, _other_host())  # fresh: that job runs (as far as we can tell)
    with pytest.raises(AtlasOutputLocked, match="host another-node.example"):
        lock.acquire()
    _write_lock(lock.path, _other_host(), age_s=3600)  # no heartbeat for an hour
    with lock:
        assert lock.holder()["pid"] == os.getpid()
    assert not lock.path.exists()
    monkeypatch.setenv(STALE_ENV, "5")
    _write_lock(lock.path, _other_host(), age_s=2)
    with pytest.raises(AtlasOutputLocked):
        lock.acquire()
    _write_lock(lock.path, _other_host(), age_s=10)
    with lock:
        pass
    monkeypatch.setenv(STALE_ENV, "soon")
    _write_lock(lock.path, _other_host(), age_s=10)
    with pytest.raises(ValueError, match=STALE_ENV):
        lock.acquire()


def test_the_holder_refreshes_its_heartbeat(tmp_path):
    lock = OutputLock(tmp_path / "o.zarr", heartbeat_s=0.05)
    with lock:
        old = time.time() - 3600
        os.utime(lock.path, (old, old))
        deadline = time.time() + 10
        while lock.path.stat().st_mtime < old + 1800 and time.time() < deadline:
            time.sleep(0.02)
        assert time.time() - lock.path.stat().st_mtime < 60
    assert not lock.path.exists()


@pytest.mark.parametrize(
    "content", ["[1, 2]", '"text"', '{"pid": "abc", "host": "h"}', '{"pid": 1.5}', "{}"]
)
def test_a_lock_that_holds_no_job_record_is_refused_cleanly(tmp_path, content):
    lock = OutputLock(tmp_path / "o.zarr")
    _write_lock(lock.path, content, age_s=3600)
    with pytest.raises(AtlasOutputLocked, match="holds no job record") as err:
        lock.acquire()
    assert str(lock.path) in str(err.value)
    assert lock.path.read_text(encoding="utf-8") == content  # left as it was


def test_an_unreadable_lock_replaced_meanwhile_is_not_taken_over(tmp_path, monkeypatch):
    lock = OutputLock(tmp_path / "o.zarr")
    _write_lock(lock.path, "", age_s=3600)  # abandoned half-written lock: stale
    real_open = os.open

    def open_(path, *args, **kwargs):
        if str(path).endswith(".takeover") and lock.path.read_text() == "":
            # meanwhile another job took the stale lock over and created its own, fresh
            # and not written yet
            lock.path.unlink()
            fd = real_open(lock.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            os.close(fd)
            lock.path.write_text(" ", encoding="utf-8")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    with pytest.raises(AtlasOutputLocked, match="not readable yet"):
        lock.acquire()
    assert lock.path.read_text(encoding="utf-8") == " "  # the other job's lock is intact


HOLDER = """
import pathlib, sys, time
from scvi_scgpt.data._atlas_lock import OutputLock
lock = OutputLock(sys.argv[1]).acquire()
pathlib.Path(sys.argv[1] + ".ready").touch()
time.sleep(120)
"""


def test_the_lock_is_released_on_sigterm(tmp_path):
    out = tmp_path / "o.zarr"
    job = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)])
    try:
        deadline = time.time() + 120
        while not (tmp_path / "o.zarr.ready").exists() and time.time() < deadline:
            time.sleep(0.05)
        assert (tmp_path / "o.zarr.lock").exists()
        job.send_signal(signal.SIGTERM)
        assert job.wait(timeout=60) == -signal.SIGTERM  # it still dies of the signal
    finally:
        job.kill()
        job.wait()
    assert not (tmp_path / "o.zarr.lock").exists()


def test_the_lock_error_is_public():
    import scvi_scgpt.data

    assert "AtlasOutputLocked" in scvi_scgpt.data.__all__
    assert scvi_scgpt.data.AtlasOutputLocked is AtlasOutputLocked
    assert issubclass(AtlasOutputLocked, RuntimeError)
