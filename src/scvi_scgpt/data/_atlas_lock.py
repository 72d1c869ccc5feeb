"""One job per atlas output: an exclusive lock file next to the store.

``OUT.lock`` is created with ``O_CREAT | O_EXCL`` (atomic on local file systems and on NFS
v3+), before anything about the output is checked, and holds the job's process id, host,
start time and model hash. A second job finds it and is refused with those details. A
lock whose process is gone (same host, the process id no longer running, or running but
started later: a reused id) is stale and taken over; taking over is itself guarded by an
exclusive ``OUT.lock.takeover`` file, so two jobs cannot both take over one stale lock. The
lock is released (removed, if it is still ours) when the run ends, also on error.

Only the launching process of a job takes the lock: the processes Lightning, ``torchrun``
or SLURM start for ranks other than 0 (:func:`launched_as_rank_zero`) run under it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

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


class AtlasOutputLocked(RuntimeError):
    """Another job is writing the output."""


def launched_as_rank_zero() -> bool:
    """Whether this process is rank 0 of its job (every rank variable that is set is 0)."""
    return all(os.environ.get(k, "0").strip() in ("", "0") for k in RANK_VARIABLES)


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


class OutputLock:
    """The lock of the atlas output ``out`` (a context manager: acquire, then release).

    Parameters
    ----------
    out
        The output path; the lock is the file ``out + ".lock"``.
    info
        Recorded in the lock besides process id, host and start time (e.g. the model hash).
    """

    def __init__(self, out: str | Path, info: Mapping | None = None) -> None:
        self.out = str(out)
        self.path = Path(self.out + ".lock")
        self.info = dict(info or {})
        self.token = uuid.uuid4().hex
        self.held = False

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
            "token": self.token,
        }

    def holder(self) -> dict | None:
        """What the lock file holds (``None``: no lock, or not readable yet)."""
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def _stale(self, holder: dict | None) -> bool:
        if holder is None:  # unreadable: abandoned if nobody wrote it for a while
            try:
                return time.time() - self.path.stat().st_mtime > ABANDONED_AFTER_S
            except OSError:
                return False
        if holder.get("host") != socket.gethostname():
            return False  # another host's process cannot be checked from here
        pid = int(holder.get("pid", -1))
        if pid <= 0 or not _alive(pid):
            return True
        start = holder.get("process_start")
        return start is not None and _process_start(pid) not in (None, start)

    def _message(self, holder: dict | None) -> str:
        if holder is None:
            who = "another job (its lock file is not readable yet)"
        else:
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started")))
            who = (
                f"pid {holder.get('pid')} on host {holder.get('host')} (started {started}, "
                f"model {holder.get('model', '?')}, command {holder.get('command', '?')!r})"
            )
        return (
            f"The atlas output {self.out!r} is being written by {who}. Two jobs never write "
            f"one output: wait for that job to finish, or write elsewhere. If that job is "
            f"gone (e.g. on a node that was lost), delete {str(self.path)!r} and run again."
        )

    # ------------------------------------------------------------------ acquire / release
    def acquire(self) -> OutputLock:
        """Take the lock, or raise :class:`AtlasOutputLocked` naming the job holding it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(50):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder is None and not self._stale(None):
                    time.sleep(0.05)  # being written by the job that just created it
                    holder = self.holder()
                if self._stale(holder):
                    self._take_over(holder)
                    continue
                raise AtlasOutputLocked(self._message(holder)) from None
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._record(), f)
                f.flush()
                os.fsync(f.fileno())
            self.held = True
            return self
        raise AtlasOutputLocked(self._message(self.holder()))

    def _take_over(self, stale: dict | None) -> None:
        """Remove a stale lock, unless someone else replaced it meanwhile."""
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
            if self.holder() == stale:
                self.path.unlink(missing_ok=True)
        finally:
            guard.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock if this object holds it (and the file is still ours)."""
        if not self.held:
            return
        self.held = False
        holder = self.holder()
        if holder is not None and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
