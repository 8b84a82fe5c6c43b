"""Acknowledge Kafka records strictly in offset order, per partition.

Faust commits the highest run of consecutive acked offsets it sees, and (as of
faust-streaming 0.15.3) does not check that run against the committed position
before a partition's first commit: an early ack of offset 300 while 0–299 still
wait for ClickHouse would commit 301 and lose them on a crash. Records reach
storage by different routes (the ClickHouse writer, the dead-letter topic), so
their acks can finish out of order; this sequencer holds each ack until every
earlier record of the same partition is done.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any


class _Tracked:
    """One record waiting for its ack: the message and the consumer that `Event.ack` would use, not the event
    (a record may wait for a checkpoint: the scoring agent holds up to `MAX_WAITING` of these)."""

    __slots__ = ("message", "consumer", "acker", "finished")

    def __init__(self, message: Any, consumer: Any, acker: OrderedAcker) -> None:
        self.message, self.consumer, self.acker, self.finished = message, consumer, acker, False

    def __call__(self) -> None:
        """The record is done: ack it once every earlier record of its partition is."""
        self.finished = True
        self.acker._release(self.message.tp)  # noqa: SLF001 - the acker's own entry


class OrderedAcker:
    def __init__(self) -> None:
        self._queues: dict[Any, deque[_Tracked]] = {}

    def track(self, event: Any) -> Callable[[], None]:
        """Register an event in consumption order; returns the callback that marks it done."""
        entry = _Tracked(event.message, event.app.consumer, self)
        self._queues.setdefault(event.message.tp, deque()).append(entry)
        return entry

    def _release(self, tp: Any) -> None:
        queue = self._queues.get(tp)
        if queue is None:  # revoked (`forget`) while this record was being stored: the new owner gets it again
            return
        while queue and queue[0].finished:
            entry = queue.popleft()
            entry.message.ack(entry.consumer)  # what `Event.ack` does

    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def forget(self, tps: set) -> None:
        """Partitions revoked: their unacked records will be redelivered to the new owner."""
        for tp in tps:
            self._queues.pop(tp, None)
