"""The bench's /proc readings of a thread's CPU time and its wait for a CPU (`wharf/bench/cpu.py`)."""

from __future__ import annotations

import math
import os
import time

from wharf.bench.cpu import run_and_wait_seconds


def test_run_grows_with_work_and_a_gone_process_reads_nan() -> None:
    run0, wait0 = run_and_wait_seconds(os.getpid())
    end = time.process_time() + 0.2
    while time.process_time() < end:  # 0.2 s of this thread's CPU
        pass
    run1, wait1 = run_and_wait_seconds(os.getpid())
    assert run1 - run0 >= 0.15
    assert wait1 >= wait0 >= 0
    assert all(math.isnan(x) for x in run_and_wait_seconds(2**22 + 12345))  # above pid_max's default: no such process


def test_a_family_share_counts_the_children_s_cpu() -> None:
    """The bench's CPU shares sum a process and its descendants (the load generator's mosquitto_pub processes)."""
    import subprocess
    import sys

    from wharf.bench.cpu import cpu_reading, family, shares

    child = subprocess.Popen([sys.executable, "-c", "import sys, time\nend = time.process_time() + 0.3\n"
                              "while time.process_time() < end: pass\nsys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert child.pid in family(os.getpid())
        groups = {"mine": family(os.getpid()), "me": [os.getpid()]}
        before = cpu_reading(groups)
        time.sleep(1.0)  # the child burns 0.3 s of CPU meanwhile, then waits
        after = cpu_reading(groups)
    finally:
        child.stdin.close()
        child.wait()
    assert (after["mine"] - before["mine"]) - (after["me"] - before["me"]) >= 0.2  # the child's
    assert shares(before, after, 1.0).startswith("mine ") and "machine idle" in shares(before, after, 1.0)
