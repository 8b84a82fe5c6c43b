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


class OrderedAcker:
    def __init__(self) -> None:
        self._queues: dict[Any, deque[list]] = {}

    def track(self, event: Any) -> Callable[[], None]:
        """Register an event in consumption order; returns the callback that marks it done."""
        tp = event.message.tp
        entry = [event, False]
        self._queues.setdefault(tp, deque()).append(entry)

        def done() -> None:
            entry[1] = True
            self._release(tp)

        return done

    def _release(self, tp: Any) -> None:
        queue = self._queues.get(tp)
        if queue is None:  # revoked (`forget`) while this record was being stored: the new owner gets it again
            return
        while queue and queue[0][1]:
            queue.popleft()[0].ack()

    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def forget(self, tps: set) -> None:
        """Partitions revoked: their unacked records will be redelivered to the new owner."""
        for tp in tps:
            self._queues.pop(tp, None)
