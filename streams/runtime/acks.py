"""Acknowledge Kafka records strictly in offset order, per partition, one record or a run of them at a time.

Faust commits the highest run of consecutive acked offsets it sees, and (as of
faust-streaming 0.15.3) does not check that run against the committed position
before a partition's first commit: an early ack of offset 300 while 0–299 still
wait for ClickHouse would commit 301 and lose them on a crash. Records reach
storage by different routes (the ClickHouse writer, the dead-letter topic), so
their acks can finish out of order; this sequencer holds each ack until every
earlier record of the same partition is done.

A batch agent whose records of one batch all finish together (their block stored, their checkpoint written) tracks
them as runs (`track_batch`): one entry and one callback per partition of the batch instead of one per record,
released in the same order; each record is still acked on its own in Faust's bookkeeping (`Message.ack`), so what
is committable stays exact.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from faust.types.tuples import ConsumerMessage, ack_lock


class _Tracked:
    """Records of one partition waiting for their ack, in consumption order: the messages and the consumer that
    `Event.ack` would use, not the events (a record may wait for a checkpoint: the scoring agent holds up to
    `MAX_WAITING` records)."""

    __slots__ = ("messages", "consumer", "acker", "finished", "tp")

    def __init__(self, tp: Any, messages: list[Any], consumer: Any, acker: OrderedAcker) -> None:
        self.tp, self.messages, self.consumer, self.acker, self.finished = tp, messages, consumer, acker, False

    @property
    def message(self) -> Any:
        """The last record of the run (a one-record entry's record)."""
        return self.messages[-1]

    def __call__(self) -> None:
        """The records are done: ack them once every earlier record of their partition is."""
        self.finished = True
        self.acker._release(self.tp)  # noqa: SLF001 - the acker's own entry


class OrderedAcker:
    def __init__(self) -> None:
        self._queues: dict[Any, deque[_Tracked]] = {}

    def track(self, event: Any) -> Callable[[], None]:
        """Register an event in consumption order; returns the callback that marks it done."""
        message = event.message
        entry = _Tracked(message.tp, [message], event.app.consumer, self)
        self._queues.setdefault(message.tp, deque()).append(entry)
        return entry

    def track_batch(self, events: Sequence[Any]) -> list[Callable[[], None]]:
        """Register a batch's events in consumption order as one run per partition; returns the runs' callbacks
        (in the order their partitions first appear): calling one marks all of its partition's records done."""
        if not events:
            return []
        runs: dict[Any, list[Any]] = {}
        for event in events:
            message = event.message
            run = runs.get(message.tp)
            if run is None:
                runs[message.tp] = [message]
            else:
                run.append(message)
        consumer = events[0].app.consumer
        queues = self._queues
        out = []
        for tp, messages in runs.items():
            entry = _Tracked(tp, messages, consumer, self)
            queue = queues.get(tp)
            if queue is None:
                queue = queues[tp] = deque()
            queue.append(entry)
            out.append(entry)
        return out

    def _release(self, tp: Any) -> None:
        queue = self._queues.get(tp)
        if queue is None:  # revoked (`forget`) while these records were being stored: the new owner gets them again
            return
        while queue and queue[0].finished:
            entry = queue.popleft()
            messages = entry.messages
            if type(messages[0]) is ConsumerMessage:
                ack_messages(entry.consumer, messages)
            else:  # another kind of message (a test's stand-in) acks itself
                for message in messages:
                    message.ack(entry.consumer)

    def waiting(self) -> int:
        return sum(len(e.messages) for q in self._queues.values() for e in q)

    def forget(self, tps: set) -> None:
        """Partitions revoked: their unacked records will be redelivered to the new owner."""
        for tp in tps:
            self._queues.pop(tp, None)


def ack_messages(consumer: Any, messages: Sequence[ConsumerMessage]) -> None:
    """`Message.ack(consumer)` for each message (what `Event.ack` does), under one hold of Faust's `ack_lock`
    rather than three per message: one reference less, and once the last agent's is gone, the consumer's own
    bookkeeping of the offset (`Consumer.ack`, which `ConsumerMessage.on_final_ack` calls)."""
    ack = consumer.ack
    with ack_lock:
        for message in messages:
            if message.acked:
                continue
            refcount = message.refcount - 1
            message.refcount = refcount if refcount > 0 else 0
            if refcount <= 0:
                ack(message)
