"""A process's CPU time, read from /proc: on a shared machine the CPU a reading costs is steadier than readings/s."""

from __future__ import annotations

import math
import os
from pathlib import Path

from wharf.infra.process import stat_fields

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU seconds of the process (all its threads), or of one thread (`thread`: its id; the main
    thread's is the pid); NaN once it is gone (a printed figure)."""
    fields = stat_fields(pid, thread)
    if fields is None:
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


def family(pid: int) -> list[int]:
    """The process and its descendants now (a server's helpers, a command's children): whose CPU a share sums."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = stat_fields(int(entry.name))
            if fields is not None:  # else gone meanwhile
                parents.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


JIT_THREADS = ("C1 CompilerThre", "C2 CompilerThre")  # a HotSpot JVM's compiler threads, as /proc names them (15 chars)


def threads_cpu_seconds(pid: int, prefixes: tuple[str, ...]) -> float:
    """User + system CPU seconds of the process's threads whose name starts with one of `prefixes` (the JVM's
    compiler threads: `JIT_THREADS`): how much of a fresh broker's CPU is compiling, not serving. A thread that
    has exited takes its seconds with it; NaN once the process is gone."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return float("nan")
    total = 0.0
    for tid in tids:
        try:
            if not Path(f"/proc/{pid}/task/{tid}/comm").read_text().startswith(prefixes):
                continue
        except OSError:
            continue  # exited meanwhile
        total += 0.0 if math.isnan(s := cpu_seconds(pid, int(tid))) else s
    return total


def idle_seconds() -> float:
    """Idle (and iowait) CPU seconds of the whole machine so far, all CPUs summed (`/proc/stat`)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return (int(fields[3]) + int(fields[4])) / _TICK


def cpu_reading(groups: dict[str, list[int]], threads: dict[str, tuple[int, tuple[str, ...]]] | None = None) -> dict[str, float]:
    """CPU seconds so far of each named group of processes, of each named set of one process's threads
    (`threads`: name -> (pid, thread name prefixes)), and the machine's idle seconds ("idle"): two readings
    give each one's share of a core over a window (`shares`)."""
    out = {name: sum(cpu_seconds(p) for p in pids) for name, pids in groups.items()}
    out |= {name: threads_cpu_seconds(pid, prefixes) for name, (pid, prefixes) in (threads or {}).items()}
    return out | {"idle": idle_seconds()}


def shares(before: dict[str, float], after: dict[str, float], seconds: float) -> str:
    """`name X %` per group (of one core, over `seconds`), then the machine's idle share of all its CPUs."""
    parts = [f"{name} {(after[name] - before[name]) / seconds:.0%}" for name in before if name != "idle"]
    idle = (after["idle"] - before["idle"]) / seconds / (os.cpu_count() or 1)
    return ", ".join(parts) + f"; machine idle {idle:.0%} of its {os.cpu_count()} CPUs"
