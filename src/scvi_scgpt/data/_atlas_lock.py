"""One job per atlas output: an exclusive lock file next to the store.

``OUT.lock`` (next to the output's resolved path, so ``out.zarr``, ``out.zarr/`` and a path
through a symbolic link share one lock) is created with ``O_CREAT | O_EXCL`` (atomic on
local file systems and on NFS v3+), before anything about the output is checked, and holds
the job's process id, host, start time and model hash. A second job finds it and is
refused with those details.

The holder refreshes the lock file's modification time every ``heartbeat_s`` seconds (a
daemon thread). A lock is stale, and taken over, when its process is gone (same host: the
process id no longer runs, or runs but started later, a reused id) or, for a lock of
another host, whose process cannot be checked from here, when it had no heartbeat for
:func:`stale_after_s` seconds (``10 × heartbeat_s``, or the environment variable
:data:`STALE_ENV`). Taking over is guarded by an exclusive ``OUT.lock.takeover`` file and
removes the lock only if it is still the very file judged stale (same inode, modification
time, size and content), so two jobs cannot both take over one stale lock, and a fresh lock
created meanwhile is never removed. A lock file that holds no job record (not a JSON object
with an integer process id) is never taken over: the job is refused with a message naming
the file.

The lock is released (removed, if it is still ours) when the run ends, also on error, and
on ``SIGTERM`` (where no other handler was installed: the process then still dies of the
signal). Only the launching process of a job takes the lock: the processes Lightning,
``torchrun`` or SLURM start for ranks other than 0 (:func:`launched_as_rank_zero`) run
under it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

#: Environment variables naming a process's rank, set by Lightning's launcher, torchrun,
#: SLURM, MPI and LSF.
RANK_VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "NODE_RANK",
    "GROUP_RANK",
    "SLURM_PROCID",
    "JSM_NAMESPACE_RANK",
    "OMPI_COMM_WORLD_RANK",
    "PMI_RANK",
)
#: Seconds after which an unreadable lock or a takeover guard is considered abandoned.
ABANDONED_AFTER_S = 60.0
#: Seconds between two refreshes of a held lock's modification time.
HEARTBEAT_S = 60.0
#: Environment variable: seconds without a heartbeat after which a lock is stale, from
#: any host (default ``10 × heartbeat_s`` of the lock's holder).
STALE_ENV = "SCVI_SCGPT_LOCK_STALE_S"


class AtlasOutputLocked(RuntimeError):
    """Another job is writing the output (the message names it and the lock file)."""


def launched_as_rank_zero() -> bool:
    """Whether this process is rank 0 of its job (every rank variable that is set is 0)."""
    return all(os.environ.get(k, "0").strip() in ("", "0") for k in RANK_VARIABLES)


def stale_after_s(heartbeat_s: float = HEARTBEAT_S) -> float:
    """Seconds without a heartbeat after which a lock is stale.

    Parameters
    ----------
    heartbeat_s
        The heartbeat of the lock's holder (what its record says).

    Returns
    -------
    The value of :data:`STALE_ENV` when set, else ``10 * heartbeat_s``.

    Raises
    ------
    ValueError
        :data:`STALE_ENV` is not a positive number of seconds.
    """
    value = os.environ.get(STALE_ENV, "").strip()
    if not value:
        return 10.0 * heartbeat_s
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{STALE_ENV} must be a positive number of seconds, got {value!r}.")
    return seconds


def _process_start(pid: int) -> str | None:
    """Start time of a process in clock ticks since boot (Linux), to tell reused ids apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _is_record(value) -> bool:
    """Whether ``value`` is a job record: a JSON object with a positive integer ``pid``."""
    pid = value.get("pid") if isinstance(value, dict) else None
    return isinstance(pid, int) and not isinstance(pid, bool) and pid > 0


def _identity(stat: os.stat_result) -> tuple[int, int, int, int]:
    return stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size


def _heartbeat_of(record: dict) -> float:
    """The heartbeat a lock's holder records (:data:`HEARTBEAT_S` for older records)."""
    beat = record.get("heartbeat_s")
    ok = isinstance(beat, int | float) and not isinstance(beat, bool) and 0 < beat < math.inf
    return float(beat) if ok else HEARTBEAT_S


def _when(seconds) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(seconds)))
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


class OutputLock:
    """The lock of the atlas output ``out`` (a context manager: acquire, then release).

    Parameters
    ----------
    out
        The output path; the lock is the file ``NAME.lock`` next to its resolved path.
    info
        Recorded in the lock besides process id, host and start time (e.g. the model hash).
    heartbeat_s
        Seconds between two refreshes of the lock file's modification time while held.
    """

    def __init__(
        self, out: str | Path, info: Mapping | None = None, *, heartbeat_s: float = HEARTBEAT_S
    ) -> None:
        resolved = Path(out).expanduser().resolve()
        if not resolved.name:
            raise ValueError(f"{str(out)!r} cannot be an atlas output (it names no file).")
        self.out = str(out)
        self.path = resolved.with_name(resolved.name + ".lock")
        self.info = dict(info or {})
        self.heartbeat_s = float(heartbeat_s)
        self.token = uuid.uuid4().hex
        self.held = False
        self._owner = 0
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._sigterm: tuple | None = None

    # ------------------------------------------------------------------ holder
    def _record(self) -> dict:
        pid = os.getpid()
        return {
            **self.info,
            "pid": pid,
            "host": socket.gethostname(),
            "started": time.time(),
            "process_start": _process_start(pid),
            "command": " ".join(sys.argv)[:500],
            "heartbeat_s": self.heartbeat_s,
            "token": self.token,
        }

    def holder(self) -> dict | None:
        """The job record in the lock file.

        Returns
        -------
        The record, or ``None``: no lock, not readable yet, or not a job record.
        """
        state, record, _ = self._inspect()
        return record if state == "held" else None

    def _inspect(self) -> tuple[str, object, os.stat_result | None]:
        """``(state, content, stat)``; state: free, unreadable, malformed or held."""
        try:
            stat = self.path.stat()
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return "free", None, None
        except OSError:
            return "unreadable", None, None
        try:
            content = json.loads(text)
        except ValueError:
            return "unreadable", text, stat
        return ("held" if _is_record(content) else "malformed"), content, stat

    def _stale(self, state: str, record, stat: os.stat_result | None) -> bool:
        if stat is None:
            return False
        age = time.time() - stat.st_mtime
        if state == "unreadable":  # abandoned if nobody wrote it for a while
            return age > ABANDONED_AFTER_S
        if state != "held":
            return False
        if record.get("host") != socket.gethostname():  # no heartbeat for too long
            return age > stale_after_s(_heartbeat_of(record))
        pid = record["pid"]
        if not _alive(pid):
            return True
        start = record.get("process_start")
        return start is not None and _process_start(pid) not in (None, start)

    def _message(self, state: str, record, stat: os.stat_result | None) -> str:
        lock = str(self.path)
        if state == "malformed":
            shown = json.dumps(record)[:200]
            return (
                f"The atlas output {self.out!r} has a lock file {lock!r} that holds no job "
                f"record (expected a JSON object with an integer 'pid'; found {shown}). It "
                "is not taken over automatically: if no job is writing this output, delete "
                "that file and run again."
            )
        if state != "held":
            who = "another job (its lock file is not readable yet)"
        else:
            who = (
                f"pid {record['pid']} on host {record.get('host')} (started "
                f"{_when(record.get('started'))}, model {record.get('model', '?')}, "
                f"command {record.get('command', '?')!r})"
            )
            if stat is not None and record.get("host") != socket.gethostname():
                who += (
                    f"; its last heartbeat was {time.time() - stat.st_mtime:.0f} s ago (stale "
                    f"after {stale_after_s(_heartbeat_of(record)):.0f} s without one, "
                    f"{STALE_ENV})"
                )
        return (
            f"The atlas output {self.out!r} is being written by {who}. Two jobs never write "
            f"one output: wait for that job to finish, or write elsewhere. If that job is "
            f"gone (e.g. on a node that was lost), delete {lock!r} and run again."
        )

    # ------------------------------------------------------------------ acquire / release
    def acquire(self) -> OutputLock:
        """Take the lock.

        Returns
        -------
        This lock, held (its heartbeat running, released on ``SIGTERM``).

        Raises
        ------
        AtlasOutputLocked
            Another job holds the lock (named in the message), or the lock file holds no
            job record.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(50):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                state, record, stat = self._inspect()
                if state == "unreadable" and not self._stale(state, record, stat):
                    time.sleep(0.05)  # being written by the job that just created it
                    state, record, stat = self._inspect()
                if state == "free":
                    continue
                if self._stale(state, record, stat):
                    self._take_over(state, record, stat)
                    continue
                raise AtlasOutputLocked(self._message(state, record, stat)) from None
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._record(), f)
                f.flush()
                os.fsync(f.fileno())
            self.held = True
            self._owner = os.getpid()
            self._start_heartbeat()
            self._catch_sigterm()
            return self
        raise AtlasOutputLocked(self._message(*self._inspect()))

    def _take_over(self, state: str, record, stat: os.stat_result) -> None:
        """Remove a stale lock, unless it changed (or was replaced) since it was judged."""
        guard = Path(str(self.path) + ".takeover")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                if time.time() - guard.stat().st_mtime > ABANDONED_AFTER_S:
                    guard.unlink(missing_ok=True)
            except OSError:
                pass
            time.sleep(0.1)
            return
        try:
            os.close(fd)
            now_state, now_record, now_stat = self._inspect()
            same = (
                now_stat is not None
                and _identity(now_stat) == _identity(stat)
                and (now_state, now_record) == (state, record)
            )
            if same:
                self.path.unlink(missing_ok=True)
        finally:
            guard.unlink(missing_ok=True)

    def _start_heartbeat(self) -> None:
        self._stop = threading.Event()
        self._beat = threading.Thread(
            target=self._heartbeat, name="scvi-scgpt-lock-heartbeat", daemon=True
        )
        self._beat.start()

    def _heartbeat(self) -> None:
        """Refresh the lock file's modification time while the lock is ours."""
        stop, warned = self._stop, False
        while not stop.wait(self.heartbeat_s):
            state, record, _ = self._inspect()
            if state == "held" and record.get("token") == self.token:
                try:
                    os.utime(self.path)
                except OSError:
                    pass
            elif not warned:
                warned = True
                logger.warning(
                    "The lock %s of the atlas output %r is no longer this job's (taken over "
                    "by another job?): two jobs may be writing one output.",
                    self.path,
                    self.out,
                )

    def _catch_sigterm(self) -> None:
        """Release on SIGTERM, where no other handler is installed (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return  # someone else handles SIGTERM (and decides whether the process ends)
        owner = self._owner

        def on_sigterm(signum, frame) -> None:
            if os.getpid() == owner:  # not in a forked child (a DataLoader worker)
                self.release()
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)  # die of the signal, as without this handler

        signal.signal(signal.SIGTERM, on_sigterm)
        self._sigterm = (on_sigterm,)

    def _restore_sigterm(self) -> None:
        handler, self._sigterm = self._sigterm, None
        if handler is None or threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is handler[0]:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def release(self) -> None:
        """Remove the lock if this object holds it (and the file is still ours)."""
        if not self.held or os.getpid() != self._owner:
            return
        self.held = False
        self._stop.set()
        if self._beat is not None and self._beat is not threading.current_thread():
            self._beat.join(timeout=5)
        self._beat = None
        self._restore_sigterm()
        holder = self.holder()
        if holder is not None and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
