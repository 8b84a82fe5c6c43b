"""A worker's clean stop (SIGTERM, SIGINT): bounded, and never committing what is not stored.

Faust's stop waits in `Consumer.wait_empty` until every record an agent took is acked, with no bound. Records
of agents that ack only after a later event (the recommender acks clicks after the next checkpoint, which its
timer writes, and timers end when the app stops) are never acked then: the worker sat there until killed
(a minute in `wharf demo`). Here a stop
1. has already stopped taking records (Faust paused the partitions and stopped the fetcher before this);
2. runs the agents' stop hooks (`WharfApp.on_stopping`: the ClickHouse writers flush, the recommender writes
   a last checkpoint), so that what was taken is stored and acked;
3. waits for the remaining acks, committing as they come, until `DRAIN_SECONDS` after the stop began;
4. goes on with Faust's stop. A record still unacked then is not committed: the next owner reads it again, and
   the writers' high-water marks and the checkpoints' offset markers make that read store nothing twice.

A watchdog (faulthandler's, a C thread) ends the process `STOP_SECONDS` after the stop began, whatever hangs:
what was acked is committed by then or read again later, as after a kill -9.
"""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import logging
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

STOP_SECONDS = 9.5  # the process is gone by then (issue 21: within 10 s of the signal)
DRAIN_SECONDS = 5.0  # of those: storing and acking what was taken; the rest is Faust's own stop and the exit

QUIET_SECONDS = 0.3  # a round of the stop hooks that brings no ack in this long ends the drain
StopHook = Callable[[], Awaitable[Any]]


def arm_watchdog() -> float:
    """Start the stop's clock: the process exits `STOP_SECONDS` from now if it has not by itself. Returns the start."""
    faulthandler.dump_traceback_later(STOP_SECONDS, exit=True, file=sys.__stderr__)
    return time.monotonic()


async def commit_acked(consumer: Any) -> None:
    """Commit every offset acked so far. Faust's `commit` waits for a commit under way (its timer's, or the batch
    fetch's `streams/runtime/batches.py` `_commit_beside`) and then returns without committing, and that one covers
    only what was acked when it began: the acks of the stop's own last checkpoint stayed uncommitted. So wait for
    any under way first."""
    while await consumer.maybe_wait_for_commit_to_finish():
        pass
    await consumer.commit()


async def drain(consumer: Any, hooks: list[StopHook], started: float, what: str = "stop") -> None:
    """Steps 2 and 3 of the stop (see the module docstring), within `DRAIN_SECONDS` of `started`. A rebalance
    (`what`) runs it too, with the hooks of `WharfApp.on_revoking`, before Faust's own wait for the rest.

    The hooks run again while they bring acks (a batch taken just before the stop reaches a writer after its first
    flush). Once a round brings none, what is left will not be acked here: records that one batch agent took and the
    stop kept from another (cleared from its buffer or never put there, `streams/runtime/batches.py`), read again next time."""
    deadline = started + DRAIN_SECONDS
    unacked = consumer._unacked_messages  # noqa: SLF001 - what Faust's `wait_empty` waits for
    while unacked and time.monotonic() < deadline:
        before = len(unacked)
        run = asyncio.gather(*(hook() for hook in hooks), return_exceptions=True)
        try:
            results = await asyncio.wait_for(asyncio.shield(run), timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            log.warning("%s: the agents did not store everything they took within %.0f s", what, DRAIN_SECONDS)
            break
        for result in results:
            if isinstance(result, BaseException):
                log.error("%s: a hook failed; its records stay uncommitted", what, exc_info=result)
        await commit_acked(consumer)
        await asyncio.sleep(min(QUIET_SECONDS, max(0.0, deadline - time.monotonic())))
        gc.collect()  # records no agent holds any more leave Faust's weak set
        consumer._clean_unacked_messages()  # noqa: SLF001
        if len(unacked) >= before:
            break
    left = Counter(f"{m.topic} (refs {m.refcount})" for m in list(unacked))
    if left:
        log.warning("%s: records taken but not stored and acked after %.1f s (a stop does not commit them, a rebalance "
                    "waits on): %s", what, time.monotonic() - started, dict(left))
    else:
        log.info("%s: everything taken was stored and acked in %.1f s", what, time.monotonic() - started)
    await commit_acked(consumer)
