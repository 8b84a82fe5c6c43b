"""Events to ClickHouse rows: one function per table, the only place that knows both shapes."""

from __future__ import annotations

import base64
import time
from typing import Any

from schemas import codec
from schemas.deadletter import DeadLetter
from schemas.events import Alert, AnomalyScore, ClickEvent, Recommendation, SensorReading, SentimentScore

Row = dict[str, Any]


def sensor_reading(e: SensorReading, ingest_ts: float | None = None) -> list[Row]:
    return [
        {
            "ts": e.ts,
            "site": e.site,
            "zone": e.zone,
            "device_id": e.device_id,
            "device_type": e.device_type,
            "seq": e.seq,
            "metric_names": list(e.metrics),
            "metric_values": list(e.metrics.values()),
            "ingest_ts": ingest_ts if ingest_ts is not None else time.time(),
        }
    ]


def anomaly_score(e: AnomalyScore) -> list[Row]:
    return [
        {
            "ts": e.ts,
            "site": e.site,
            "zone": e.zone,
            "device_id": e.device_id,
            "device_type": e.device_type,
            "seq": e.seq,
            "metric": e.metric,
            "value": e.value,
            "score": e.score,
            "threshold": e.threshold,
            "is_anomaly": int(e.is_anomaly),
            "component_names": list(e.components),
            "component_scores": list(e.components.values()),
        }
    ]


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


def click(e: ClickEvent) -> list[Row]:
    return [
        {
            "ts": e.ts,
            "event_id": e.event_id,
            "user_id": e.user_id,
            "session_id": e.session_id,
            "item_id": e.item_id,
            "action": e.action,
            "price": e.price,
            "category": e.category or "",
        }
    ]


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
