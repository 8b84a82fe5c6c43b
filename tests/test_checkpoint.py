"""streams/state/checkpoint.py: the durability protocol every stateful agent shares, without servers (the agents'
own kill -9, rebalance and outage tests run it on the real ones)."""

from __future__ import annotations

import pytest

from streams.state.checkpoint import Checkpoint, Marks


async def test_a_record_is_acked_only_when_stored_and_in_a_committed_checkpoint() -> None:
    acked: list[str] = []
    ckpt = Checkpoint("t")
    stored_a = ckpt.hold(0, lambda: acked.append("a"))
    ckpt.hold(0, lambda: acked.append("b"), stored=True)  # rows are another agent's
    stored_a()
    assert acked == []  # stored, but no checkpoint includes it yet
    steps: list[str] = []

    async def flush() -> None:
        steps.append("flush")

    async def write(cut) -> None:  # noqa: ANN001
        steps.append(f"write {len(cut)}")
        assert acked == []  # nothing acked before the state is written

    assert await ckpt.commit(write, flush=flush) == 2
    assert steps == ["flush", "write 2"] and acked == ["a", "b"]
    # a record applied after the cut waits for the next checkpoint, and one whose row is stored later waits for it
    stored_c = ckpt.hold(1, lambda: acked.append("c"))

    async def write_again(cut) -> None:  # noqa: ANN001
        steps.append(f"write {len(cut)}")

    await ckpt.commit(write_again)
    assert acked == ["a", "b"]
    stored_c()
    assert acked == ["a", "b", "c"] and ckpt.waiting() == 0


async def test_partitions_not_written_or_revoked_are_never_acked() -> None:
    acked: list[int] = []
    ckpt = Checkpoint("t")
    for p in (0, 1, 2):
        ckpt.hold(p, lambda p=p: acked.append(p), stored=True)
    ckpt.forget({2})  # revoked: the new owner gets its records again

    async def write(cut) -> set[int]:  # noqa: ANN001
        return {0}  # partition 1 was revoked while its checkpoint was written

    assert await ckpt.commit(write) == 1
    assert acked == [0]


async def test_a_failed_write_acks_nothing() -> None:
    acked: list[int] = []
    ckpt = Checkpoint("t")
    ckpt.hold(0, lambda: acked.append(0), stored=True)

    async def write(cut) -> None:  # noqa: ANN001
        raise ConnectionError("Kafka away")

    with pytest.raises(ConnectionError):
        await ckpt.commit(write)
    assert acked == [] and ckpt.waiting() == 0  # the records are redelivered to whoever restores the last checkpoint


def test_marks_say_what_a_restored_state_includes_and_refuse_anything_else() -> None:
    m = Marks()
    m.restore(3, Marks.decode(Marks.encode({"readings": 41, "status": 7})))
    assert m.includes("readings", 3, 41) and not m.includes("readings", 3, 42) and not m.includes("readings", 4, 0)
    m.apply("readings", 3, 50)
    m.apply("readings", 3, 45)  # never moves back
    assert m.of(3) == {"readings": 50, "status": 7}
    assert m.holds("readings", 3, 50) and not m.includes("readings", 3, 50)  # applied in this run, not restored
    assert m.covers({("readings", 3): 50, ("status", 3): 7}) and not m.covers({("readings", 3): 51})
    assert not m.covers({("readings", 4): 0})
    m.forget({3})
    assert m.of(3) == {} and not m.includes("readings", 3, 0) and not m.holds("readings", 3, 0)
    for raw in (b"[1]", b'{"t": "1"}', b"{", b"[" * 100_000):
        with pytest.raises(ValueError):
            Marks.decode(raw)


async def test_an_alarm_event_kafka_refused_fails_the_sensor_checkpoint_and_acks_nothing() -> None:
    """The scoring agent does not wait for its alarm events per batch (agents/scoring.py `send_alerts`): the checkpoint
    that acks their records waits for them in its flush, so a refused one stops it before any state or ack."""
    import asyncio

    from agents.scoring import _flush

    acked: list[int] = []
    written: list[int] = []
    ckpt = Checkpoint("t")
    ckpt.hold(0, lambda: acked.append(0), stored=True)
    sent = [asyncio.get_running_loop().create_future() for _ in range(2)]
    sent[0].set_result(None)
    sent[1].set_exception(ConnectionError("alerts topic: not enough replicas"))

    async def write(cut) -> None:  # noqa: ANN001
        written.append(len(cut))

    with pytest.raises(ConnectionError):
        await ckpt.commit(write, flush=lambda: _flush(sent))
    assert written == [] and acked == []


async def test_scoring_goes_on_while_a_forced_checkpoint_is_written_and_stays_one_behind() -> None:
    """agents/scoring.py `checkpoint_when_many`: the batch after the one that forced a checkpoint does not wait for
    its writes (it did, counting the records being written: 1.4 s every 20 s at 5,000 readings/s); the next forced
    one waits for the first, so at most twice the limit wait for a checkpoint."""
    import asyncio

    from agents.scoring import checkpoint_when_many

    ckpt = Checkpoint("t")
    gate = asyncio.Event()
    started: list[asyncio.Task] = []

    async def write(cut) -> None:  # noqa: ANN001
        await gate.wait()  # Kafka has not confirmed the state yet

    def start() -> asyncio.Task:
        started.append(asyncio.ensure_future(ckpt.commit(write)))
        return started[-1]

    def in_flight() -> asyncio.Task | None:
        return next((t for t in started if not t.done()), None)

    def batch(n: int) -> None:
        for _ in range(n):
            ckpt.hold(0, lambda: None, stored=True)

    batch(3)
    await asyncio.wait_for(checkpoint_when_many(ckpt, in_flight, start, limit=3), 1)
    await asyncio.sleep(0)  # the checkpoint took its cut and waits for Kafka
    assert len(started) == 1 and ckpt.waiting() == 3
    batch(2)  # the next batch: 5 wait, 2 of them in no checkpoint
    await asyncio.wait_for(checkpoint_when_many(ckpt, in_flight, start, limit=3), 1)  # returns at once
    assert len(started) == 1
    batch(1)  # 3 in no checkpoint while the first is written: this one waits for it
    second = asyncio.ensure_future(checkpoint_when_many(ckpt, in_flight, start, limit=3))
    await asyncio.sleep(0.05)
    assert not second.done() and len(started) == 1 and ckpt.hurried  # waited for, so its release will not pause
    gate.set()
    await asyncio.wait_for(second, 1)
    assert await started[0] == 3 and len(started) == 2
    assert await asyncio.wait_for(started[1], 1) == 3 and ckpt.waiting() == 0


async def test_a_paced_release_pauses_between_chunks_until_someone_hurries_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint nobody waits for releases its acks in chunks with a pause between them (100,000 acks at once held
    a shared loop 0.5-0.9 s); a revocation or stop (`hurry`) ends the pause under way and the rest go at once."""
    import asyncio

    from streams.state import checkpoint

    monkeypatch.setattr(checkpoint, "RELEASE_CHUNK", 2)
    monkeypatch.setattr(checkpoint, "RELEASE_PAUSE", 60.0)
    acked: list[int] = []
    ckpt = Checkpoint("t")
    for i in range(10):
        ckpt.hold(0, lambda i=i: acked.append(i), stored=True)

    async def write(cut) -> None:  # noqa: ANN001
        return None

    task = asyncio.ensure_future(ckpt.commit(write, paced=True))
    await asyncio.sleep(0.05)
    assert acked == [0, 1] and not task.done()  # the first chunk, then a pause
    ckpt.hurry()
    assert await asyncio.wait_for(task, 5) == 10
    assert acked == list(range(10)) and not ckpt.hurried  # in order; the next commit is paced again
    ckpt.hold(0, lambda: acked.append(10), stored=True)
    assert await asyncio.wait_for(ckpt.commit(write), 5) == 1  # unpaced (a commit someone waits for): no pause
