"""Memory, CPU-contention and profile measurements of the worker processes (stdlib only).

The workers run in two different virtual environments (ours and the official ``scgpt``),
so this module must not import anything beyond the standard library.
"""

from __future__ import annotations

import os
import pstats
import resource
import threading
import time
from pathlib import Path

_KB_PER_MB = 1024.0


def _status_kb(pid: int | str, field: str) -> float:
    """A ``kB`` field of ``/proc/<pid>/status`` (0 if the process is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0.0


def _pss_kb(pid: int | str) -> float:
    """Proportional set size of one process (shared pages split between sharers)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return float(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0.0


def _descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (via ``/proc/<pid>/task/*/children``)."""
    out: list[int] = []
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except FileNotFoundError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{p}/task/{tid}/children", encoding="ascii") as fh:
                    kids = [int(x) for x in fh.read().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
            out.extend(kids)
            stack.extend(kids)
    return out


def current_rss_mb() -> float:
    """Resident set size of this process now, in MiB."""
    return _status_kb("self", "VmRSS") / _KB_PER_MB


def current_pss_mb() -> float:
    """Proportional set size of this process now, in MiB."""
    return _pss_kb("self") / _KB_PER_MB


class TreeMemorySampler:
    """Background thread sampling the summed PSS / RSS of this process and its children.

    ``ru_maxrss`` of ``RUSAGE_CHILDREN`` is the peak of the *largest single* child, and forked
    DataLoader workers share (copy-on-write) pages with the parent, so adding it to the
    parent's peak both misses concurrent workers and double-counts shared pages. The summed
    PSS of the live process tree is the physical memory the job really holds.
    """

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.peak_pss_mb = 0.0
        self.peak_rss_sum_mb = 0.0
        self.max_children = 0
        self.n_samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        me = os.getpid()
        pids = [me, *_descendants(me)]
        pss = sum(_pss_kb(p) for p in pids) / _KB_PER_MB
        rss = sum(_status_kb(p, "VmRSS") for p in pids) / _KB_PER_MB
        self.peak_pss_mb = max(self.peak_pss_mb, pss)
        self.peak_rss_sum_mb = max(self.peak_rss_sum_mb, rss)
        self.max_children = max(self.max_children, len(pids) - 1)
        self.n_samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> TreeMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def rusage_peaks_mb() -> dict[str, float]:
    """``ru_maxrss`` (Linux: kB) of this process and of its largest reaped child, in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / _KB_PER_MB
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / _KB_PER_MB
    return {"peak_rss_self_mb": own, "peak_rss_children_mb": kids}


def memory_report(baseline_rss_mb: float, baseline_pss_mb: float, sampler: TreeMemorySampler):
    """Peak memory figures, absolute and added on top of the post-import/post-read baseline."""
    peaks = rusage_peaks_mb()
    peak = peaks["peak_rss_self_mb"] + peaks["peak_rss_children_mb"]
    return {
        **peaks,
        "peak_rss_mb": peak,
        "baseline_rss_mb": baseline_rss_mb,
        "added_rss_mb": peak - baseline_rss_mb,
        "peak_pss_tree_mb": sampler.peak_pss_mb,
        "peak_rss_tree_sum_mb": sampler.peak_rss_sum_mb,
        "baseline_pss_mb": baseline_pss_mb,
        "added_pss_tree_mb": sampler.peak_pss_mb - baseline_pss_mb,
        "max_child_processes": sampler.max_children,
        "memory_samples": sampler.n_samples,
    }


def _stat_jiffies() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine from ``/proc/stat``."""
    with open("/proc/stat", encoding="ascii") as fh:
        fields = [float(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user/nice
    return total - idle, total


class CpuContention:
    """CPU time used on the machine by *other* processes during a timed region, in cores.

    Machine busy time (``/proc/stat``) minus this process's and its reaped children's CPU
    time (``os.times``), divided by the wall time. Near 0 on a quiet machine.
    """

    def __enter__(self) -> CpuContention:
        self._busy0, _ = _stat_jiffies()
        self._own0 = sum(os.times()[:4])
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self._t0
        busy1, _ = _stat_jiffies()
        hz = os.sysconf("SC_CLK_TCK")
        busy = (busy1 - self._busy0) / hz
        own = sum(os.times()[:4]) - self._own0
        self.wall_s = wall
        self.own_cpu_cores = own / wall if wall else float("nan")
        self.other_cpu_cores = max(busy - own, 0.0) / wall if wall else float("nan")

    def report(self) -> dict[str, float]:
        return {"own_cpu_cores": self.own_cpu_cores, "other_cpu_cores": self.other_cpu_cores}


def machine_busy_cores(seconds: float = 2.0) -> float:
    """Cores kept busy on the whole machine over the next ``seconds``."""
    busy0, _ = _stat_jiffies()
    time.sleep(seconds)
    busy1, _ = _stat_jiffies()
    return (busy1 - busy0) / os.sysconf("SC_CLK_TCK") / seconds


def profile_top(profiler, n: int = 15) -> list[dict]:
    """The ``n`` functions with the most own time (``tottime``) in a ``cProfile.Profile``."""
    stats = pstats.Stats(profiler).stats  # {(file, line, name): (cc, nc, tt, ct, callers)}
    rows = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:n]
    out = []
    for (file, line, name), (_cc, nc, tt, ct, _callers) in rows:
        short = "/".join(Path(file).parts[-2:]) if file != "~" else ""
        where = f"{short}:{line}({name})" if short else name
        out.append({"function": where, "ncalls": nc, "tottime_s": tt, "cumtime_s": ct})
    return out


class Stopwatch:
    """``time.perf_counter`` laps."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> float:
        self.laps[name] = time.perf_counter() - self.t0
        return self.laps[name]
