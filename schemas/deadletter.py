"""The dead-letter envelope: invalid input is kept, with its original bytes and why it was refused.

An envelope is bounded whatever the input was: it keeps at most `keep_bytes` of the original bytes (with the
size and SHA-256 of the whole), the first `MAX_ERRORS` problems, each cut to `MAX_TEXT` characters. So it always
fits Kafka's 1 MB record limit (base64 of the default 64 KiB prefix is 87 KB), and input of any size is accounted
for instead of retried forever because its dead letter cannot be produced.
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Literal

from pydantic import BaseModel, Field

from schemas import codec

DEFAULT_KEEP_BYTES = 64 * 1024
MAX_KEEP_BYTES = 512 * 1024  # base64 of this plus the envelope stays well under Kafka's 1 MB default
MAX_ERRORS = 10
MAX_TEXT = 300


def _cut(text: object) -> str:
    text = str(text)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."


class DeadLetter(BaseModel):
    v: Literal[1] = 1
    kind: str = Field(..., description="What the input should have been: sensor_reading, click, review, ...")
    source: Literal["mqtt", "kafka", "http"]
    mqtt_topic: str | None = None
    kafka_topic: str | None = None
    kafka_partition: int | None = None
    kafka_offset: int | None = None
    stage: str = Field("validation", description="The step that refused the record: validation, or the step it broke.")
    field: str = Field(..., description="Dotted path of the first offending field, or '$' for the whole payload.")
    reason: str
    errors: list[dict[str, str]] = Field(default_factory=list, description="The first problems found: field, value, reason.")
    errors_total: int | None = Field(None, description="How many problems were found in all (only `errors` are kept).")
    received_ts: float = Field(default_factory=time.time)
    payload_b64: str = Field(..., description="The original bytes, base64; only their first `keep_bytes` if cut.")
    payload_size: int = Field(..., description="The size of the whole original payload.")
    payload_sha256: str | None = Field(None, description="SHA-256 of the whole original payload, hex.")
    payload_truncated: bool = False

    @classmethod
    def wrap(cls, payload: bytes, *, kind: str, source: str, errors: list[dict[str, str]],
             keep_bytes: int = DEFAULT_KEEP_BYTES, stage: str = "validation", **where: object) -> DeadLetter:
        keep = max(0, min(keep_bytes, MAX_KEEP_BYTES))
        kept = [{k: _cut(v) for k, v in e.items()} for e in errors[:MAX_ERRORS]]
        first = kept[0] if kept else {"field": "$", "reason": "invalid"}
        for name in ("mqtt_topic", "kafka_topic"):
            if isinstance(where.get(name), str):
                where[name] = _cut(where[name])
        return cls(
            kind=_cut(kind),
            source=source,
            stage=_cut(stage),
            field=first["field"],
            reason=first["reason"],
            errors=kept,
            errors_total=len(errors),
            payload_b64=base64.b64encode(payload[:keep]).decode("ascii"),
            payload_size=len(payload),
            payload_sha256=hashlib.sha256(payload).hexdigest(),
            payload_truncated=len(payload) > keep,
            **where,
        )

    def key(self) -> bytes:
        """Its Kafka key: all dead letters of one source partition (or MQTT topic) share a dead-letter partition,
        in order; that is what lets the dead-letter agent drop the copies a redelivery produces."""
        if self.kafka_topic is not None:
            return f"{self.kafka_topic}/{self.kafka_partition}".encode()
        return (self.mqtt_topic or self.source).encode()

    @property
    def payload(self) -> bytes:
        return base64.b64decode(self.payload_b64)

    def encode(self) -> bytes:
        return codec.dumps(self)
