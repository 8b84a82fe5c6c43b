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


def test_named_threads_cpu_counts_only_those_threads() -> None:
    """The bench's share of a broker's JIT compiler threads: the CPU of a process's threads by name, not the rest."""
    import subprocess
    import sys

    from wharf.bench.cpu import JIT_THREADS, cpu_reading, threads_cpu_seconds

    code = ("import sys, threading, time\n"
            "def burn(name, s):\n"
            "    open(f'/proc/self/task/{threading.get_native_id()}/comm', 'w').write(name)\n"
            "    end = time.thread_time() + s\n"
            "    while time.thread_time() < end: pass\n"
            "burnt, done = threading.Event(), threading.Event()\n"
            "t = threading.Thread(target=lambda: (burn('C2 CompilerThread0', 0.4), burnt.set(), done.wait()), daemon=True)\n"
            "t.start()\n"
            "burn('busy-other', 0.2)\n"
            "burnt.wait()\n"
            "print('burnt', flush=True)\n"
            "sys.stdin.read()\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "burnt"
        compiling = threads_cpu_seconds(child.pid, JIT_THREADS)
        other = threads_cpu_seconds(child.pid, ("busy-other",))
        reading = cpu_reading({"child": [child.pid]}, {"compilers": (child.pid, JIT_THREADS)})
    finally:
        child.stdin.close()
        child.wait()
    assert 0.3 <= compiling < 0.55  # the compiler-named thread's 0.4 s, not the other's 0.2 s
    assert 0.15 <= other < 0.35
    assert reading["compilers"] == compiling and reading["child"] >= compiling + other
    assert threads_cpu_seconds(child.pid, JIT_THREADS) != threads_cpu_seconds(child.pid, JIT_THREADS)  # gone: NaN
