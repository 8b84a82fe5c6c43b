"""A process's CPU time, read from /proc: on a shared machine the CPU a reading costs is steadier than readings/s."""

from __future__ import annotations

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU seconds of the process (all its threads), or of one thread (`thread`: its id; the main
    thread's is the pid); NaN once it is gone (a printed figure)."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14 and 15 of stat(5))


def run_and_wait_seconds(pid: int, thread: int | None = None) -> tuple[float, float]:
    """Seconds a thread (the main thread by default) has run on a CPU and waited, runnable, for one
    (`/proc/.../schedstat`); a latency that grows while the thread is mostly waiting is the machine's, not its own
    work's. NaNs once it is gone or without scheduler statistics."""
    try:
        run, wait = Path(f"/proc/{pid}/task/{thread or pid}/schedstat").read_text().split()[:2]
    except (OSError, ValueError):
        return float("nan"), float("nan")
    return int(run) / 1e9, int(wait) / 1e9
