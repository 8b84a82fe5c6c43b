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
