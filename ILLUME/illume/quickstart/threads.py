"""How many CPU threads each quick-start process may use without oversubscribing the machine.

torch starts one intra-op thread per core it can see. Beside other busy programs those threads
spin against each other and a step can take 10-100x longer (measured: the tokenizer stage went
from 5 it/s to one step per 10-20 s with two busy processes on 2 cores). So each stage asks, just
before it starts, how many cores are actually free and gives every process its share:
processes x threads <= free cores, at least one thread each. Then a busy machine costs a
proportional slowdown, not an order of magnitude.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuState", "thread_budget", "measure_cpu_state", "threads_per_process"]

logger = logging.getLogger(__name__)

_PROC_STAT = Path("/proc/stat")


@dataclass(frozen=True)
class CpuState:
    """`usable`: cores this process may run on (affinity, cgroup quota); `busy`: cores others keep busy."""

    usable: int
    busy: float


def thread_budget(state: CpuState, processes: int = 1) -> int:
    """Threads per process so that `processes` x threads fits in the free cores (never below 1).

    A core counts as free when less than half of it is busy, so measurement noise on an idle
    machine does not cost a thread.
    """
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    free = max(0, min(state.usable, state.usable - round(state.busy)))
    return max(1, free // processes)


def _usable_cores() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "max 100000" or "<quota> <period>"
    try:
        limit, period = quota.read_text().split()
        if limit != "max":
            cores = min(cores, max(1, int(int(limit) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _busy_from_proc_stat(seconds: float) -> float | None:
    """Cores kept busy by the whole machine over a short window (None where /proc/stat is absent)."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in _PROC_STAT.read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
        cpus = sum(1 for line in _PROC_STAT.read_text().splitlines() if line[:3] == "cpu" and line[3:4].isdigit())
    except (OSError, ValueError, IndexError):
        return None
    elapsed = total1 - total0
    if elapsed <= 0 or cpus < 1:
        return None
    return cpus * (1.0 - (idle1 - idle0) / elapsed)


def measure_cpu_state(probe_seconds: float = 0.3) -> CpuState:
    """Usable cores and the cores other programs use now (a short /proc/stat probe, else the load average)."""
    busy = _busy_from_proc_stat(probe_seconds)
    if busy is None:
        busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return CpuState(usable=_usable_cores(), busy=busy)


def threads_per_process(configured: int | None, processes: int = 1) -> int:
    """`configured` when the settings fix it, else the budget measured now."""
    if configured:
        return int(configured)
    state = measure_cpu_state()
    threads = thread_budget(state, processes)
    logger.info(
        "CPU: %d usable cores, %.1f busy with other work -> %d thread(s) x %d process(es)",
        state.usable, state.busy, threads, processes,
    )  # fmt: skip
    return threads
