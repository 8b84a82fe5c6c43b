"""Kafka records to ClickHouse rows, with refusals sent to the dead-letter topic.

Each record is acked (its offset may be committed) only once its rows are in
ClickHouse or its dead letter is confirmed by Kafka.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from schemas.events import TimedEvent
from schemas.validation import InvalidEvent, Limits, parse
from streams.acks import OrderedAcker
from streams.sink import ClickHouseWriter


async def send_dead_letter(dlq_topic: Any, error: InvalidEvent, payload: bytes, source: str, **where: Any) -> None:
    """Produce the dead letter and wait until Kafka has it (acks=all)."""
    letter = error.dead_letter(payload, source, **where)
    fut = await dlq_topic.send(key=letter.kind.encode(), value=letter.encode())
    await fut


async def store_events(
    events: Sequence[Any],
    *,
    model: type[TimedEvent],
    to_rows: Callable[[Any], list[dict[str, Any]]],
    writer: ClickHouseWriter,
    dlq_topic: Any,
    limits: Limits,
    acker: OrderedAcker,
) -> int:
    """Validate a batch of Faust events and hand them to the writer; returns how many were refused."""
    refused = 0
    for event in events:
        done = acker.track(event)
        msg = event.message
        payload: bytes = event.value if isinstance(event.value, bytes) else bytes(event.value)
        try:
            # Time bounds are checked against the record's Kafka timestamp, not the wall clock:
            # a backlog consumed after an outage is still valid.
            parsed = parse(payload, model, now=msg.timestamp, limits=limits)
        except InvalidEvent as exc:
            refused += 1
            await send_dead_letter(dlq_topic, exc, payload, "kafka", kafka_topic=msg.topic, kafka_partition=msg.partition, kafka_offset=msg.offset)
            done()
            continue
        await writer.put(msg.partition, msg.offset, to_rows(parsed), done)
    return refused
