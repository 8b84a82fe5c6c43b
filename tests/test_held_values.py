"""agents/scoring.py `_let_go`: the scoring agent drops a held reading's decoded value only when no other agent
still needs it (a real Faust message and the real acker; the consumer is never reached while a reference is left)."""

from __future__ import annotations

from collections import deque

from faust.types.tuples import Message

from streams.runtime.acks import OrderedAcker, _Tracked


def _message() -> Message:
    m = Message("readings", 0, 7, 0.0, 0, [], b"dev-1", b"{}", None)
    m.value = {"decoded": True}  # what the batch router leaves on it for the next agent
    m.incref(2)  # two agents read the topic: the raw storage agent and the scoring agent
    return m


def test_the_value_goes_once_the_storage_agent_acked_and_ours_is_pending() -> None:
    from agents.scoring import _let_go

    m = _message()
    ours = _Tracked(m.tp, [m], None, OrderedAcker())
    assert not _let_go(ours) and m.value is not None  # the storage agent has not stored it yet
    m.ack(None)  # the storage agent stored and acked it
    assert _let_go(ours) and m.value is None


def test_the_value_stays_for_the_storage_agent_when_a_checkpoint_acked_ours_first() -> None:
    from agents.scoring import _let_go

    m = _message()
    acker = OrderedAcker()
    ours = _Tracked(m.tp, [m], None, acker)
    acker._queues[m.tp] = deque([ours])  # noqa: SLF001 - what `track` registers
    ours()  # a checkpoint included it: our ack goes first (the storage agent is behind)
    assert m.refcount == 1
    assert _let_go(ours)  # not held by this agent any longer ...
    assert m.value == {"decoded": True}  # ... and the storage agent still finds its value
