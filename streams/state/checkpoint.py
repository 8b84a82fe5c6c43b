"""The one durability protocol of Wharf's stateful agents: the sensor models (`agents/scoring.py`), the recommender
shards (`agents/recommender.py`) and the review model (`agents/reviews.py`).

An agent keeps its state in memory and applies its records to it in offset order. A record is acked (so its offset
may be committed) only when both are true:

1. its rows are stored (the writer calls the record's `stored` callback; a record whose rows are another agent's
   is held with `stored=True`);
2. a checkpoint that includes the record is in the state changelog.

So the committed offset never runs ahead of the state: after a crash (kill -9) or a rebalance the new owner restores
the newest checkpoint, Kafka redelivers every record after it, and `Marks.includes` skips the redelivered ones that
the checkpoint holds already. Nothing is learned twice and nothing is missed, and no side consumer re-reads a gap.
What a redelivered record sent before the crash (alarm events, scores, dead letters) is sent again with the same
identity and dropped as a copy downstream (alarm id and revision, the writer's offsets, dead-letter sources).

`Checkpoint.commit` orders the steps: cut the records applied so far, flush the sinks, write the state with its
`Marks` (the agent's `write`), then release the acks of what the write included. A partition the agent could not
write (it was revoked meanwhile) is not acked: its records go to the new owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from streams.runtime.slices import Slice

RELEASE_CHUNK = 1024  # acks released between two yields (or pauses) of the loop
RELEASE_PAUSE = 0.01  # a paced release's pause per chunk: 100,000 acks spread over ~1.2 s instead of ~0.5 s

Ack = Callable[[], None]


class Marks:
    """The offset marker: per (topic, partition), the last offset applied to the state. Written with each
    checkpoint; a restored marker says which redelivered records the state includes."""

    def __init__(self) -> None:
        self.applied: dict[tuple[str, int], int] = {}  # moved by every record applied
        self.restored: dict[tuple[str, int], int] = {}  # from the checkpoint: records at or below are in the state

    def includes(self, topic: str, partition: int, offset: int) -> bool:
        """Whether a record is in the restored state already (a redelivery after a crash or a rebalance)."""
        return offset <= self.restored.get((topic, partition), -1)

    def holds(self, topic: str, partition: int, offset: int) -> bool:
        """Whether a record is in the state in memory: restored with it or applied since. For a state that lives on
        while Kafka delivers a record again within one run (after a restart's recovery, `streams/runtime/flow.py`, or
        a partition revoked and assigned back), which `includes` alone would apply twice."""
        return offset <= self.applied.get((topic, partition), -1)

    def covers(self, marks: dict[tuple[str, int], int]) -> bool:
        """Whether this marker includes every record that `marks` does (per topic and partition, at or beyond)."""
        return all(self.applied.get(key, -1) >= offset for key, offset in marks.items())

    def apply(self, topic: str, partition: int, offset: int) -> None:
        key = (topic, partition)
        if offset > self.applied.get(key, -1):
            self.applied[key] = offset

    def of(self, partition: int) -> dict[str, int]:
        """The marker of one partition: {topic: last offset applied}."""
        return {t: o for (t, p), o in self.applied.items() if p == partition}

    def partitions(self) -> set[int]:
        return {p for _, p in self.applied}

    def restore(self, partition: int, marks: dict[str, int]) -> None:
        for topic, offset in marks.items():
            self.restored[(topic, partition)] = self.applied[(topic, partition)] = offset

    def forget(self, partitions: Iterable[int] | None = None) -> None:
        """Revoked partitions (all when None): their next owner restores their marker."""
        if partitions is None:
            self.applied.clear()
            self.restored.clear()
            return
        gone = set(partitions)
        for d in (self.applied, self.restored):
            for key in [k for k in d if k[1] in gone]:
                del d[key]

    @staticmethod
    def encode(marks: dict[str, int]) -> bytes:
        return json.dumps(marks, sort_keys=True).encode()

    @staticmethod
    def decode(raw: bytes | None) -> dict[str, int]:
        """{topic: offset}; ValueError for anything else (a changelog record is input like any other)."""
        try:
            marks = json.loads(raw) if raw else {}
        except RecursionError as exc:
            raise ValueError("nested too deep") from exc
        if type(marks) is not dict or not all(type(t) is str and type(o) is int for t, o in marks.items()):
            raise ValueError("not {topic: offset}")
        return marks


@dataclass(slots=True)
class _Held:
    """A record applied and not yet acked; calling it says its rows are stored (it is the `stored` callback
    itself: up to `MAX_WAITING` of these wait for a checkpoint, so each is kept small)."""

    ack: Ack
    stored: bool = False
    committed: bool = False
    n: int = 1  # records it acks (a run of a batch: `OrderedAcker.track_batch`)

    def __call__(self) -> None:
        self.stored = True
        self.release()

    def release(self) -> None:
        if self.stored and self.committed:
            self.ack()


@dataclass
class Cut:
    """The records a checkpoint includes, by partition, in application order."""

    held: dict[int, list[_Held]]
    records: int = 0

    def __len__(self) -> int:
        """Records (not entries: one entry may hold a batch's records of its partition)."""
        return self.records


@dataclass
class Checkpoint:
    """The acks of one agent's applied records, released by the checkpoints that include them."""

    name: str
    held: dict[int, list[_Held]] = field(default_factory=dict)
    since: float = field(default_factory=time.monotonic)  # the last cut: when the next checkpoint is due
    commits: int = 0
    committing: int = 0  # records of the commits under way (an agent may cut the next while one is written)
    _hurry: asyncio.Event = field(default_factory=asyncio.Event)  # set by `hurry`: releases under way stop pausing
    held_records: int = 0  # records in `held`

    def hold(self, partition: int, ack: Ack, *, stored: bool = False, n: int = 1) -> Ack:
        """A record applied to the state (or `n` of one partition, acked together by `ack`); returns its `stored`
        callback for its sink (`stored=True`: a record whose rows are another agent's; nothing to call). The
        record's `ack` runs once it is stored and a committed checkpoint includes it."""
        h = _Held(ack, stored, False, n)
        self.held.setdefault(partition, []).append(h)
        self.held_records += n
        return h

    def waiting(self) -> int:
        """Records applied and not yet in a committed checkpoint."""
        return self.held_records + self.committing

    def cut(self) -> Cut:
        """What the next write includes: every record applied so far (take it in step with the state)."""
        cut, self.held, self.since = Cut(self.held, self.held_records), {}, time.monotonic()
        self.held_records = 0
        return cut

    def hurry(self) -> None:
        """Someone waits for the commits under way (a revocation, a stop): their releases stop pausing."""
        self._hurry.set()

    @property
    def hurried(self) -> bool:
        return self._hurry.is_set()

    async def commit(self, write: Callable[[Cut], Awaitable[Iterable[int] | None]],
                     flush: Callable[[], Awaitable[None]] | None = None, cut: Cut | None = None,
                     paced: bool = False) -> int:
        """The protocol's one ordering: cut (or take the `cut` the caller made in step with its state, e.g. with
        its learners asked under its lock), flush the sinks, write the state and its marks (`write` returns the
        partitions written, None for all, once Kafka has them, or once they are in a Faust table, whose changelog
        Faust flushes before it commits any offset), then release the acks of what was written; returns how
        many records were released. `paced`: a commit nobody waits for releases its acks in chunks with a pause
        between them (`RELEASE_PAUSE`), unless `hurry` is called meanwhile."""
        cut = self.cut() if cut is None else cut
        n = len(cut)
        self.committing += n
        try:
            if flush is not None:
                await flush()
            written = await write(cut)
            return await self._release(cut, written, paced)
        finally:
            self.committing -= n
            if not self.committing:
                self._hurry.clear()

    async def _release(self, cut: Cut, written: Iterable[int] | None, paced: bool = False) -> int:
        """Acks of the written partitions, in application order; yields to the loop now and then (an ack is ~1.5 us,
        and a cut can hold 100,000). Paced, it pauses between chunks: 100,000 acks at once took 0.5-0.9 s of a
        loop that shares two cores, and the alarms of the readings that arrived meanwhile waited (`wharf bench
        sensors` at 5,000 readings/s)."""
        written = None if written is None else set(written)
        n = 0
        tick_at = RELEASE_CHUNK
        work = Slice()
        for p, held in cut.held.items():
            if written is not None and p not in written:
                continue  # not written (revoked meanwhile): the new owner gets these records again
            for h in held:
                h.committed = True
                h.release()
                n += h.n
                if n >= tick_at:
                    tick_at = n + RELEASE_CHUNK
                    if paced and not self.hurried:
                        await self._pause()
                    else:
                        await work.tick()
        self.commits += 1
        return n

    async def _pause(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._hurry.wait(), RELEASE_PAUSE)

    def forget(self, partitions: Iterable[int]) -> None:
        """Revoked partitions: their held records are never acked here; the new owner gets them again."""
        for p in partitions:
            self.held_records -= sum(h.n for h in self.held.pop(p, ()))
