"""The fetch's hole check (`streams/runtime/batches.py` `_hole`): a record is passed on only after every record
before it, in the cases a per-fetch trace of a rebalance showed (docs/faust-findings.md)."""

from __future__ import annotations

from streams.runtime.batches import _first_undelivered, _hole, _not_passed

TP = ("test.sensor_readings", 2)


def test_a_jump_past_the_read_offset_is_a_hole_and_the_next_offset_is_not():
    assert _hole(193, 171, None) == 171  # a fetch of 171-192 was dropped, 193 came next
    assert _hole(172, 171, None) is None
    assert _hole(171, 171, None) is None  # Faust's seek sets the read offset to the next one to read
    assert _hole(5, None, None) is None  # nothing read yet and nothing dropped: whatever comes first


def test_a_record_after_one_dropped_with_no_read_offset_yet_is_a_hole():
    undelivered: dict = {}
    _not_passed(undelivered, 2, TP, 114)  # 114-123 fetched while the partition was paused, dropped
    first = _first_undelivered(undelivered, TP, None, 2)
    assert first == 114
    assert _hole(124, None, first) == 114  # 124 must not reach the writers before 114-123
    assert _hole(114, None, first) is None  # the re-fetch from 114 goes on


def test_a_dropped_record_is_forgotten_once_read_again_or_after_a_rebalance():
    undelivered: dict = {}
    _not_passed(undelivered, 2, TP, 114)
    _not_passed(undelivered, 2, TP, 120)  # a later drop keeps the lowest
    assert undelivered[TP] == (2, 114)
    assert _first_undelivered(undelivered, TP, 113, 2) == 114  # read up to 113: 114 is still owed
    assert _hole(124, 100, 114) == 100  # the read offset lies further back: read from there
    assert _first_undelivered(undelivered, TP, 114, 2) is None  # the read offset reached it (Faust's seek, or read)
    assert TP not in undelivered
    _not_passed(undelivered, 2, TP, 114)
    assert _first_undelivered(undelivered, TP, None, 3) is None  # a new assignment reads from the committed offset
    assert TP not in undelivered


async def test_the_fetch_commits_beside_itself_one_commit_at_a_time_and_a_failed_one_crashes() -> None:
    """`_commit_beside`: a checkpoint's 100,000 acks made Faust's drain loop commit five or six times in a row with the
    fetch waiting on each; the commit now runs in a task, at most one at a time, and one that fails crashes the
    consumer as before."""
    import asyncio

    from streams.runtime.batches import _commit_beside

    class Consumer:  # the two calls `_commit_beside` makes of Faust's consumer
        def __init__(self) -> None:
            self.gate = asyncio.Event()
            self.commits = 0
            self.crashed: list[BaseException] = []
            self.fail = False

        async def commit(self) -> bool:
            self.commits += 1
            await self.gate.wait()
            if self.fail:
                raise ConnectionError("coordinator gone")
            return True

        async def crash(self, exc: BaseException) -> None:
            self.crashed.append(exc)

    consumer = Consumer()
    running: list = [None]
    _commit_beside(consumer, running)  # returns at once: the fetch goes on
    await asyncio.sleep(0)
    _commit_beside(consumer, running)  # one under way: no second one
    await asyncio.sleep(0)
    assert consumer.commits == 1 and not running[0].done()
    consumer.gate.set()
    await asyncio.sleep(0.01)
    assert running[0].done() and consumer.crashed == []
    consumer.fail = True
    _commit_beside(consumer, running)
    await asyncio.sleep(0.01)
    assert consumer.commits == 2 and [type(e) for e in consumer.crashed] == [ConnectionError]
