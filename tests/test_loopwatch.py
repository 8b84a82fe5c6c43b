"""A stall of the worker's event loop is counted, timed and attributed to the code that held the loop."""

from __future__ import annotations

import asyncio
import time

from streams.runtime.loopwatch import LoopWatch


def hold_the_loop(seconds: float) -> None:
    time.sleep(seconds)  # synchronous: nothing else on the loop runs meanwhile


async def test_a_blocking_call_is_recorded_with_its_stack() -> None:
    watch = LoopWatch(threshold_ms=50)
    watch.start(asyncio.get_running_loop())
    await asyncio.sleep(0.1)
    assert watch.stalls == 0  # an idle loop beats on time
    hold_the_loop(0.3)
    await asyncio.sleep(0.05)  # the next beat measures the gap
    assert watch.stalls == 1
    (stall,) = watch.longest
    assert 280 <= stall.ms < 1000
    stack, samples = stall.samples.most_common(1)[0]
    assert samples >= 2  # sampled every 10 ms while the loop was held (fewer when the machine is busy: 4 in one CI run)
    assert stack[-1].endswith(" hold_the_loop") and stack[-1].startswith("tests/test_loopwatch.py:")  # innermost last
    shown = watch.as_dict()
    assert shown["stalls"] == 1 and shown["longest"][0]["stacks"][0]["stack"] == list(stack)


async def test_short_pauses_are_not_stalls() -> None:
    watch = LoopWatch(threshold_ms=200)
    watch.start(asyncio.get_running_loop())
    for _ in range(5):
        hold_the_loop(0.05)
        await asyncio.sleep(0.02)
    assert watch.stalls == 0 and watch.max_ms == 0


async def test_a_stopped_watch_records_nothing() -> None:
    watch = LoopWatch(threshold_ms=50)
    watch.start(asyncio.get_running_loop())
    await asyncio.sleep(0.05)
    watch.stop()
    hold_the_loop(0.2)
    await asyncio.sleep(0.05)
    assert watch.stalls == 0
