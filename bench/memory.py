"""Worker memory as the kernel sees it: USS/PSS where readable (shared pages counted fairly), else RSS."""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class ProcMemory:
    pid: int
    rss: int
    uss: int | None
    pss: int | None


def measure(pid: int) -> ProcMemory:
    p = psutil.Process(pid)
    try:
        full = p.memory_full_info()
        return ProcMemory(pid, full.rss, getattr(full, "uss", None), getattr(full, "pss", None))
    except psutil.AccessDenied:
        return ProcMemory(pid, p.memory_info().rss, None, None)


def workers_of(master_pid: int) -> list[int]:
    """The master's direct children: every backend here forks its workers straight from the master."""
    try:
        return sorted(c.pid for c in psutil.Process(master_pid).children(recursive=False))
    except psutil.NoSuchProcess:
        return []


def summarize(pids: list[int]) -> dict[str, object]:
    """Median and total per metric over the given processes, in MiB."""
    samples: list[ProcMemory] = []
    for pid in pids:
        try:
            samples.append(measure(pid))
        except psutil.NoSuchProcess:
            continue
    out: dict[str, object] = {"count": len(samples)}
    for key in ("rss", "pss", "uss"):
        values = [getattr(s, key) for s in samples if getattr(s, key) is not None]
        if values:
            out[f"{key}_median_mib"] = round(statistics.median(values) / 2**20, 2)
            out[f"{key}_total_mib"] = round(sum(values) / 2**20, 2)
    return out


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent not idle since boot; deltas show what else ran meanwhile."""
    t = psutil.cpu_times()
    return float(sum(t)) - t.idle - getattr(t, "iowait", 0.0)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time consumed so far by these processes (those that still exist)."""
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def cpu_seconds_exact(pids: list[int]) -> float:
    """cpu_seconds() to the nanosecond, from the scheduler's own account of each live thread.

    /proc/PID/stat counts in clock ticks (10 ms), sampled: over a round of a few seconds
    that is a few percent of a backend's CPU. /proc/PID/task/TID/schedstat is the exact
    run time, but only of threads still alive, so this is for processes whose threads all
    live as long as they do (the hello servers); elsewhere, where it cannot say, cpu_seconds().
    """
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            continue
        except OSError:
            return cpu_seconds(pids)
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                    total += int(f.read().split()[0])
            except FileNotFoundError:
                continue
            except (OSError, ValueError, IndexError):
                return cpu_seconds(pids)
    return total / 1e9
