"""Kafka records to ClickHouse rows, with refusals sent to the dead-letter topic.

Each record is acked (its offset may be committed) only once its rows are in
ClickHouse or its dead letter is confirmed by Kafka.
"""

from __future__ import annotations

import asyncio

from collections.abc import Callable, Sequence
from typing import Any

from schemas.deadletter import DEFAULT_KEEP_BYTES, DeadLetter
from schemas.events import TimedEvent
from schemas.rows import Columns
from schemas.validation import Checked, E, InvalidEvent, Limits, checked
from streams.runtime import counts
from streams.runtime.acks import OrderedAcker
from streams.runtime.recent import RecentKeys
from streams.sinks.block import Block
from streams.sinks.writer import ClickHouseWriter
from streams.runtime.slices import Slice


async def send_dead_letter(dlq_topic: Any, error: InvalidEvent, payload: bytes, source: str, *,
                           keep_bytes: int = DEFAULT_KEEP_BYTES, **where: Any) -> None:
    """Produce the dead letter (at most `keep_bytes` of the payload) and wait until Kafka has it (acks=all)."""
    await (await produce_dead_letter(dlq_topic, error, payload, source, keep_bytes=keep_bytes, **where))


async def produce_dead_letter(dlq_topic: Any, error: InvalidEvent, payload: bytes, source: str, *,
                              keep_bytes: int = DEFAULT_KEEP_BYTES, **where: Any) -> Any:
    """Queue the dead letter and return the future Kafka confirms it with. Letters of one source partition must be
    queued in offset order, one after the other (not from concurrent tasks): `SourceMarks` relies on it."""
    letter = error.dead_letter(payload, source, keep_bytes=keep_bytes, **where)
    counts.count_dead_letter(where.get("kafka_topic") or source, error.stage)
    return await dlq_topic.send(key=letter.key(), value=letter.encode())


async def dead_letter_event(dlq_topic: Any, event: Any, error: InvalidEvent, *, limits: Limits,
                            payload: bytes | None = None) -> None:
    """A Faust event's record as a dead letter (its bytes, or `payload` when a reader already has them; the
    source coordinates), confirmed by Kafka: so that no content stops an agent and none is dropped unseen."""
    msg = event.message
    if payload is None:
        payload = msg.value if isinstance(msg.value, bytes) else bytes(msg.value or b"")
    await send_dead_letter(dlq_topic, error, payload, "kafka", keep_bytes=limits.dead_letter_keep_bytes,
                           kafka_topic=msg.topic, kafka_partition=msg.partition, kafka_offset=msg.offset)


async def valid_or_dead_letter(event: Any, model: type[E], *, dlq_topic: Any, limits: Limits) -> E | None:
    """A Faust event's value validated, or None once its dead letter (the original bytes and every reason) is in
    Kafka. The value is the record's bytes, or what a decoder made of them (`schemas.validation.Checked`).
    Time bounds are checked against the record's Kafka timestamp, not the wall clock: a backlog consumed after an
    outage is still valid."""
    msg = event.message
    record = checked(event.value, model, now=msg.timestamp, limits=limits)
    if record.error is None:
        return record.event
    await dead_letter_event(dlq_topic, event, record.error, limits=limits, payload=record.payload)
    return None


async def store_events(
    events: Sequence[Any],
    *,
    model: type[TimedEvent],
    to_columns: Callable[[list[Any]], Columns],
    writer: ClickHouseWriter,
    dlq_topic: Any,
    limits: Limits,
    acker: OrderedAcker,
    duplicate: Callable[[Any, int], bool] | None = None,
) -> int:
    """Validate a batch of Faust events and hand the valid ones to the writer as one block of columns
    (`to_columns(events)`, a row each); returns how many were refused (`valid_or_dead_letter`).

    `duplicate(parsed, partition)` True: a copy of an event already stored (e.g. an MQTT
    redelivery the bridge forwarded twice): acked in order, not stored again.

    The batch is acked as a whole (`OrderedAcker.track_batch`, one run per partition), once its block is stored;
    its dead letters are confirmed by Kafka before that, and a batch without a valid record is acked at once."""
    refused = 0
    counts.records[f"storage/{writer.spec.name}"] += len(events)
    work = Slice()
    runs = acker.track_batch(events)
    valid: list[Any] = []
    partitions: list[int] = []
    offsets: list[int] = []
    for k, event in enumerate(events):
        if k & 63 == 63:
            await work.tick()
        msg = event.message
        value = event.value
        if type(value) is Checked and value.error is None:  # checked by the batch delivery: no coroutine per record
            parsed = value.event
        elif (parsed := await valid_or_dead_letter(event, model, dlq_topic=dlq_topic, limits=limits)) is None:
            refused += 1
            continue
        if duplicate is not None and duplicate(parsed, msg.partition):
            continue
        valid.append(parsed)
        partitions.append(msg.partition)
        offsets.append(msg.offset)
    if valid:
        await writer.put_block(Block(to_columns(valid), partitions, offsets, [None] * len(valid), after=runs))
    else:
        for run in runs:
            run()
    return refused


def expire_dead_letters(ch, ttl_days: float, now: float) -> int | None:  # noqa: ANN001 - streams.sinks.clickhouse.ClickHouse
    """Delete dead letters received more than `ttl_days` before `now` (0: keep them all); returns the cutoff.
    A mutation rather than a table TTL: ClickHouse 18.16 has no TTL clause, and ALTER ... DELETE runs on both."""
    if ttl_days <= 0:
        return None
    cutoff = int(now - ttl_days * 86400)
    ch.command(f"ALTER TABLE {ch.table('dead_letters')} DELETE WHERE received_ts < toDateTime({cutoff}, 'UTC')")
    return cutoff


class SourceMarks:
    """Highest source offset already dead-lettered, per source partition and stage.

    A worker that dies after producing a dead letter but before committing the
    refused record's offset refuses it again after the restart; the copy has a
    source offset at or below the mark (dead letters of one source partition
    arrive in order, see `DeadLetter.key`, from each stage that refuses records:
    validation in one agent, a model step in another), so it is acked and not
    stored twice.
    """

    def __init__(self) -> None:
        self.marks: dict[tuple[str, int, str], int] = {}
        self.loaded = False

    async def load(self, ch) -> None:  # noqa: ANN001 - streams.sinks.clickhouse.ClickHouse
        if self.loaded:
            return
        rows = await asyncio.to_thread(
            ch.query,
            f"SELECT src_topic, src_partition, stage, max(src_offset) FROM {ch.table('dead_letters')} "
            f"WHERE src_partition >= 0 GROUP BY src_topic, src_partition, stage",
        )
        self.marks = {(t, int(p), stage): int(o) for t, p, stage, o in rows}
        self.loaded = True

    def is_copy(self, letter: DeadLetter) -> bool:
        if letter.kafka_topic is None or letter.kafka_partition is None or letter.kafka_offset is None:
            return False
        key = (letter.kafka_topic, letter.kafka_partition, letter.stage)
        if letter.kafka_offset <= self.marks.get(key, -1):
            return True
        self.marks[key] = letter.kafka_offset
        return False


class StoredKeys:
    """The last `capacity` event keys stored per source partition (a `RecentKeys` each), to drop copies with a new
    Kafka offset.

    Loaded per partition from ClickHouse (`load_sql(partition, capacity)` returns rows that
    are keys, newest first) the first time the partition is seen and again after a
    rebalance, so a restart or a partition move does not forget what is stored.
    """

    def __init__(self, capacity: int, load_sql: Callable[[int, int], str]) -> None:
        self.capacity = capacity
        self.load_sql = load_sql
        self.keys: dict[int, RecentKeys[tuple]] = {}

    async def ensure(self, ch, partitions: set[int]) -> None:  # noqa: ANN001 - streams.sinks.clickhouse.ClickHouse
        for p in partitions - self.keys.keys():
            rows = await asyncio.to_thread(ch.query, self.load_sql(p, self.capacity))
            self.keys[p] = RecentKeys(self.capacity, (tuple(r) for r in reversed(rows)))

    def forget(self) -> None:
        self.keys.clear()

    @property
    def copies(self) -> int:
        return sum(w.copies for w in self.keys.values())

    def seen(self, partition: int, key: tuple) -> bool:
        """True if `key` is a copy; otherwise remember it."""
        window = self.keys.get(partition)
        if window is None:
            window = self.keys[partition] = RecentKeys(self.capacity)
        return window.seen(key)
