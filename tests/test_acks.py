"""Ordered acks, one record or a batch's run per partition at a time: Faust's own messages, acked in offset order,
final only once every agent that got a record acked it."""

from __future__ import annotations

from types import SimpleNamespace

from faust.types.tuples import TP, ConsumerMessage

from streams.runtime.acks import OrderedAcker


class Bookkeeping:
    """What a Faust consumer's `ack` is told: the final ack of each record (the committable offsets)."""

    def __init__(self) -> None:
        self.final: list[tuple[int, int]] = []

    def ack(self, message: ConsumerMessage) -> bool:
        message.acked = True
        self.final.append((message.partition, message.offset))
        return True


def records(consumer: Bookkeeping, partition_offsets: list[tuple[int, int]], agents: int) -> list[SimpleNamespace]:
    app = SimpleNamespace(consumer=consumer)
    out = []
    for p, o in partition_offsets:
        m = ConsumerMessage("t", p, o, 0.0, 0, None, None, b"v", None, tp=TP("t", p))
        m.incref(agents)  # as the batch router does: one reference per agent of the topic
        out.append(SimpleNamespace(message=m, app=app))
    return out


def test_runs_of_a_batch_are_acked_in_offset_order_and_final_once_every_agent_acked() -> None:
    consumer = Bookkeeping()
    first = records(consumer, [(0, 0), (1, 0), (0, 1), (1, 1)], agents=2)
    second = records(consumer, [(0, 2), (1, 2)], agents=2)
    storage, scoring = OrderedAcker(), OrderedAcker()  # two agents, each with its own sequencer
    s1, s2 = storage.track_batch(first), storage.track_batch(second)
    c1, c2 = scoring.track_batch(first), scoring.track_batch(second)
    assert len(s1) == 2 and len(s2) == 2  # one run per partition
    for run in s2:  # the later batch finishes first: held until the earlier one is done
        run()
    for run in c1 + c2:
        run()
    assert consumer.final == []  # storage has not acked the first batch: nothing is committable
    s1[1]()  # partition 1 of the first batch: its records and then the second batch's are final
    assert consumer.final == [(1, 0), (1, 1), (1, 2)]
    s1[0]()
    assert consumer.final == [(1, 0), (1, 1), (1, 2), (0, 0), (0, 1), (0, 2)]
    assert all(e.message.refcount == 0 and e.message.acked for e in first + second)


def test_a_revoked_partition_is_never_acked() -> None:
    consumer = Bookkeeping()
    acker = OrderedAcker()
    runs = acker.track_batch(records(consumer, [(0, 5), (3, 9)], agents=1))
    acker.forget({TP("t", 3)})
    for run in runs:
        run()
    assert consumer.final == [(0, 5)]
