"""CPU timing that notices other processes: a repeat counts as clean when the rest of the machine
stayed below a share of the cores while it ran (as LeRobot's peer benchmark does), and a task can
wait for a quiet machine before it starts. Used by ``speed.py``; Linux only (``/proc``)."""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

__all__ = ["HZ", "rss_peak_mib", "timeit", "wait_for_quiet"]

#: kernel clock ticks per second (the unit of ``/proc`` CPU times).
HZ = os.sysconf("SC_CLK_TCK")


def _cpu_sample() -> tuple[int, int, int]:
    """(machine jiffies, machine idle jiffies, this process's jiffies), as the peer script."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    with open("/proc/self/stat") as f:
        st = f.read()
    fields = st[st.rfind(")") + 2 :].split()
    return sum(v), v[3] + v[4], int(fields[11]) + int(fields[12])


def _foreign(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    """Share of all cores' time used by other processes between samples ``a`` and ``b``."""
    dt = b[0] - a[0]
    return 0.0 if dt <= 0 else max(0.0, (dt - (b[1] - a[1]) - (b[2] - a[2])) / dt)


def timeit(fn: Callable[[], Any], warmup: int, repeats: int, opts: dict[str, float]) -> dict[str, Any]:
    """Run ``fn`` ``warmup`` times, then until ``repeats`` clean repeats (other processes below
    ``opts["quiet_thr"]`` of the machine) or ``repeats + opts["max_extra"]`` attempts, waiting up
    to ``opts["quiet_wait"]`` s for a quiet second before each. Returns the summary (seconds); a
    dict returned by ``fn`` adds per-phase medians (``<key>_median_s``)."""
    for _ in range(warmup):
        fn()
    recs: list[dict[str, float]] = []
    while True:
        t_wait = time.perf_counter()
        while True:
            a = _cpu_sample()
            time.sleep(0.5 if opts["quiet_wait"] > 0 else 0.0)
            if _foreign(a, _cpu_sample()) < opts["quiet_thr"] or time.perf_counter() - t_wait >= opts["quiet_wait"]:
                break
        a = _cpu_sample()
        t0 = time.perf_counter()
        extra = fn()
        t, b = time.perf_counter() - t0, _cpu_sample()
        rec = {"t": t, "foreign": _foreign(a, b), "cpu": (b[2] - a[2]) / HZ}
        rec.update(extra if isinstance(extra, dict) else {})
        recs.append(rec)
        n_clean = sum(r["foreign"] < opts["quiet_thr"] for r in recs)
        if n_clean >= repeats or len(recs) >= repeats + opts["max_extra"]:
            break
    clean = [r for r in recs if r["foreign"] < opts["quiet_thr"]]
    use = clean if len(clean) >= max(3, (len(recs) + 1) // 3) else recs
    out = {"median_s": statistics.median(r["t"] for r in use), "min_s": min(r["t"] for r in use),
           "max_s": max(r["t"] for r in use), "n": len(use), "n_clean": len(clean),
           "n_attempts": len(recs), "contended": use is recs and len(clean) < len(recs),
           "all_s": [r["t"] for r in recs], "foreign_share": [round(r["foreign"], 3) for r in recs],
           "cpu_s": [r["cpu"] for r in recs], "cpu_median_all_s": statistics.median(r["cpu"] for r in recs)}
    for key in recs[0]:
        if key not in ("t", "foreign", "cpu"):
            out[f"{key}_median_s"] = statistics.median(r[key] for r in use)
    return out


def rss_peak_mib() -> float:
    """Peak resident memory of this process (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def wait_for_quiet(max_busy_cores: float, tries: int, pause_s: float) -> list[dict[str, float]]:
    """Before a task: measure for 2 s how many cores other processes keep busy (the driver is
    idle, so every busy jiffy is foreign); retry after ``pause_s`` up to ``tries`` times until it is
    <= ``max_busy_cores``. The 1-min load average would still count our own previous task."""
    seen = []
    for i in range(tries):
        a = _cpu_sample()
        time.sleep(2.0)
        busy = _foreign(a, _cpu_sample()) * (os.cpu_count() or 1)
        seen.append({"busy_cores_other": round(busy, 2), "loadavg1": os.getloadavg()[0]})
        if busy <= max_busy_cores or i == tries - 1:
            break
        time.sleep(pause_s)
    return seen
