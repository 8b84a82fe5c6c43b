"""Events to ClickHouse rows: one function per table, the only place that knows both shapes."""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from operator import attrgetter
from typing import Any

from schemas import codec
from schemas.deadletter import DeadLetter
from schemas.events import Alert, ClickEvent, Recommendation, SensorReading, SentimentScore

Row = dict[str, Any]
Columns = dict[str, list[Any]]
"""A table's rows as one list per column: what the agents with a row per record hand the writer."""


def _fields(events: Sequence[Any], names: tuple[str, ...]) -> Columns:
    """A column per event attribute of the same name (`map` with `attrgetter`: no Python loop per value)."""
    return {name: list(map(attrgetter(name), events)) for name in names}


_READING_KEYS = ("ts", "site", "zone", "device_id", "device_type", "seq")
"""The columns that say which reading a row is, in `sensor_readings` and `anomaly_scores`."""


def sensor_readings(events: Sequence[SensorReading], ingest_ts: float | None = None) -> Columns:
    """The `sensor_readings` rows of a batch of readings, as columns (`streams/sinks/block.py`); `ingest_ts` (now by
    default) is the batch's."""
    ingest_ts = time.time() if ingest_ts is None else ingest_ts
    return {
        **_fields(events, _READING_KEYS),
        "metric_names": _shared_names(events),
        "metric_values": [list(e.metrics.values()) for e in events],
        "ingest_ts": [ingest_ts] * len(events),
    }


_NO_COMPONENTS: list[Any] = []


def _shared_names(events: Sequence[SensorReading]) -> list[list[str]]:
    """Each reading's metric names, one list for the readings of a batch that name the same metrics in the same
    order (never changed; most of a device's readings): not a list a row that the garbage collector would scan while
    the block waits to be stored."""
    shared: dict[tuple[str, ...], list[str]] = {}
    out = []
    for e in events:
        key = tuple(e.metrics)
        names = shared.get(key)
        if names is None:
            names = shared[key] = list(key)
        out.append(names)
    return out


def anomaly_scores(readings: Sequence[SensorReading], metrics: list[str], values: list[float], scores: list[float],
                   thresholds: list[float], anomalies: list[int]) -> Columns:
    """The `anomaly_scores` rows of scored readings (`metric` the one that drove the score, and its value), as
    columns; components are not stored per reading (empty: one shared empty list, never changed, not a list a row that
    the garbage collector would scan while the block waits to be stored)."""
    return {
        **_fields(readings, _READING_KEYS),
        "metric": metrics,
        "value": values,
        "score": scores,
        "threshold": thresholds,
        "is_anomaly": anomalies,
        "component_names": [_NO_COMPONENTS] * len(readings),
        "component_scores": [_NO_COMPONENTS] * len(readings),
    }


_SCORE_KEYS = (*_READING_KEYS, "metric", "value", "score", "threshold")


def anomaly_score_messages(columns: Columns) -> list[Row]:
    """The `AnomalyScore` messages (the anomaly-scores topic) of `anomaly_scores` rows given as columns: the
    schema's fields, not the table's (one `components` map instead of two arrays, a boolean `is_anomaly`)."""
    cols = [columns[k] for k in _SCORE_KEYS]
    return [{**dict(zip(_SCORE_KEYS, vals, strict=True)), "is_anomaly": bool(anom), "components": dict(zip(names, comps, strict=True)), "v": 1}
            for *vals, anom, names, comps in zip(*cols, columns["is_anomaly"], columns["component_names"],
                                                 columns["component_scores"], strict=True)]


def alert(e: Alert) -> list[Row]:
    return [
        {
            "ts": e.ts,
            "alarm_id": e.alarm_id,
            "alarm_type": e.alarm_type,
            "source_type": e.source_type,
            "source_id": e.source_id,
            "site": e.site or "",
            "zone": e.zone or "",
            "severity": e.severity,
            "status": e.status,
            "start_ts": e.start_ts,
            "end_ts": e.end_ts,
            "ack_ts": e.ack_ts,
            "message": e.message,
            "details": codec.dumps(e.details).decode(),
        }
    ]


def clicks(events: Sequence[ClickEvent]) -> Columns:
    """The `clicks` rows of a batch of clicks, as columns."""
    return {
        **_fields(events, ("ts", "event_id", "user_id", "session_id", "item_id", "action", "price")),
        "category": [e.category or "" for e in events],
    }


def review(e: SentimentScore) -> list[Row]:
    return [
        {
            "ts": e.ts,
            "review_id": e.review_id,
            "user_id": e.user_id,
            "item_id": e.item_id,
            "seller_id": e.seller_id or "",
            "rating": e.rating,
            "text": e.text,
            "score": e.score,
            "label": e.label,
            "model": e.model,
        }
    ]


def recommendation(e: Recommendation) -> list[Row]:
    return [
        {"ts": e.ts, "user_id": e.user_id, "rank": rank, "item_id": it.item_id, "score": it.score, "reason": it.reason}
        for rank, it in enumerate(e.items, start=1)
    ]


def dead_letter(e: DeadLetter) -> list[Row]:
    return [
        {
            "received_ts": e.received_ts,
            "kind": e.kind,
            "source": e.source,
            "mqtt_topic": e.mqtt_topic or "",
            "src_topic": e.kafka_topic or "",
            "src_partition": -1 if e.kafka_partition is None else e.kafka_partition,
            "src_offset": -1 if e.kafka_offset is None else e.kafka_offset,
            "field": e.field,
            "reason": e.reason,
            "errors": codec.dumps(e.errors).decode(),
            # ClickHouse String holds any bytes; chdb's JSON input wants text, so keep base64 there too.
            "payload": e.payload_b64,
            "payload_size": e.payload_size,
            "payload_sha256": e.payload_sha256 or "",
            "stage": e.stage,
            "payload_truncated": int(e.payload_truncated),
        }
    ]


def decode_payload_column(value: str) -> bytes:
    return base64.b64decode(value)
