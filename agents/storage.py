"""Agents that store raw input and dead letters in ClickHouse, exactly once, and `store_topic`: every other
topic-to-table agent's loop.

Each is a small loop over batches (acks are manual, released in offset order once the writer has stored the
rows). The input paths (readings, clicks) are batch agents (`streams/runtime/batches.py`) whose records arrive
validated once for every agent of their topic; their work is in `streams.sinks.ingest.store_events`. The other
topics go through Faust agents (`noack_take`) and `store_topic`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from schemas import rows
from schemas.deadletter import DeadLetter
from schemas.events import ClickEvent, SensorReading
from schemas.validation import FieldError, InvalidEvent
from streams.sinks.ingest import dead_letter_event
from streams.runtime.acks import OrderedAcker
from streams.runtime.app import app, limits, settings, storage, topics
from streams.sinks.ingest import SourceMarks, StoredKeys, expire_dead_letters, store_events

log = logging.getLogger(__name__)

BATCH = settings.sink_batch_rows
WITHIN = settings.sink_batch_seconds


@app.batch_agents.agent(topics["topic_sensor_readings"], name="wharf.store-sensor-readings", max_records=BATCH, within=WITHIN)
async def store_sensor_readings(agent):  # noqa: ANN001 - streams.runtime.batches.BatchAgent
    # The readings arrive checked (`streams.runtime.app.check_device_record`, once for this agent and the scoring agent).
    writer = storage.writer("sensor_readings", settings.topic_sensor_readings)
    acker = OrderedAcker()
    # MQTT redeliveries: a reading is (device_id, seq, ts); ts in whole seconds, as ClickHouse 18.16 stores it.
    stored = StoredKeys(settings.sensor_dedup_window, lambda p, n: (
        f"SELECT device_id, seq, toUInt32(ts) FROM {storage.ch.table('sensor_readings')} "
        f"WHERE kafka_partition = {p} ORDER BY kafka_offset DESC LIMIT {n}"))
    rebalances = app.rebalancing_count
    async for events in agent.batches():
        if rebalances != app.rebalancing_count:  # partitions may have been stored by another worker meanwhile
            rebalances = app.rebalancing_count
            stored.forget()
        await stored.ensure(storage.ch, {e.message.partition for e in events})
        await store_events(events, model=SensorReading, to_columns=rows.sensor_readings, writer=writer,
                           dlq_topic=topics["topic_dead_letters"], limits=limits, acker=acker,
                           duplicate=lambda r, p: stored.seen(p, (r.device_id, r.seq, int(r.ts))))


@app.batch_agents.agent(topics["topic_clicks"], name="wharf.store-clicks", max_records=BATCH, within=WITHIN)
async def store_clicks(agent):  # noqa: ANN001 - streams.runtime.batches.BatchAgent: the clicks skip Faust's per-record path
    # The clicks arrive checked (`schemas.validation.Checked`, decoded once for this agent and the recommender).
    writer = storage.writer("clicks", settings.topic_clicks)
    acker = OrderedAcker()
    async for events in agent.batches():
        await store_events(events, model=ClickEvent, to_columns=rows.clicks, writer=writer,
                           dlq_topic=topics["topic_dead_letters"], limits=limits, acker=acker)


class Copies(Protocol):
    """What a topic's table holds already (loaded from ClickHouse once): a record re-sent after a crash is stored once."""

    async def load(self, ch: Any) -> None: ...

    def is_copy(self, item: Any) -> bool: ...


async def store_topic(stream, table: str, source_topic: str, parse: Callable[[Any], Any],  # noqa: ANN001 - faust stream
                      to_rows: Callable[[Any], list[dict[str, Any]]], refusal: Callable[[BaseException], InvalidEvent] | None = None,
                      *, seen: Copies | None = None, batch: int = BATCH, within: float = WITHIN) -> None:
    """A topic -> its table through the writer, exactly once. `parse` reads an event; one it refuses is dead-lettered
    with `refusal(exc)` (without `refusal` its error stops the agent); one `seen` holds already is acked without a row."""
    writer = storage.writer(table, source_topic)
    acker = OrderedAcker()
    async for events in stream.noack_take(batch, within=within):
        if seen is not None:
            await seen.load(storage.ch)
        for event in events:
            done = acker.track(event)
            if refusal is None:
                item = parse(event)
            else:
                try:
                    item = parse(event)
                except Exception as exc:  # noqa: BLE001 - anyone with access to Kafka can write here
                    await dead_letter_event(topics["topic_dead_letters"], event, refusal(exc), limits=limits)
                    done()
                    continue
            if seen is not None and seen.is_copy(item):  # re-sent after a crash of the agent that sent it
                done()
                continue
            await writer.put(event.message.partition, event.message.offset, to_rows(item), done)


@app.agent(topics["topic_dead_letters"], name="wharf.store-dead-letters")
async def store_dead_letters(stream):  # noqa: ANN001
    await store_topic(stream, "dead_letters", settings.topic_dead_letters, lambda event: parse_dead_letter(event.value, event.message),
                      rows.dead_letter, seen=SourceMarks())


@app.timer(3600.0, on_leader=True)
async def _expire_dead_letters() -> None:
    """Dead letters are kept `dead_letter_ttl_days`; one worker (the leader) deletes older ones hourly."""
    try:
        await asyncio.to_thread(expire_dead_letters, storage.ch, settings.dead_letter_ttl_days, time.time())
    except Exception:  # noqa: BLE001 - ClickHouse away: the next hour tries again
        log.exception("deleting expired dead letters failed")


def parse_dead_letter(payload: bytes, msg) -> DeadLetter:  # noqa: ANN001
    """A dead-letter topic must never lose data either: a record that is not an envelope is wrapped in one."""
    try:
        return DeadLetter.model_validate_json(payload)
    except ValueError as exc:
        error = InvalidEvent("dead_letter", [FieldError("$", f"{len(payload)} bytes", f"not a DeadLetter envelope: {str(exc).splitlines()[0]}")])
        return error.dead_letter(payload, "kafka", kafka_topic=msg.topic, kafka_partition=msg.partition, kafka_offset=msg.offset)
