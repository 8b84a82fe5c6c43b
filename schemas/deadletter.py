"""The dead-letter envelope: invalid input is kept, with its original bytes and why it was refused."""

from __future__ import annotations

import base64
import time
from typing import Literal

from pydantic import BaseModel, Field

from schemas import codec


class DeadLetter(BaseModel):
    v: Literal[1] = 1
    kind: str = Field(..., description="What the input should have been: sensor_reading, click, review, ...")
    source: Literal["mqtt", "kafka", "http"]
    mqtt_topic: str | None = None
    kafka_topic: str | None = None
    kafka_partition: int | None = None
    kafka_offset: int | None = None
    field: str = Field(..., description="Dotted path of the first offending field, or '$' for the whole payload.")
    reason: str
    errors: list[dict[str, str]] = Field(default_factory=list, description="Every problem found: field, value, reason.")
    received_ts: float = Field(default_factory=time.time)
    payload_b64: str = Field(..., description="The original bytes, base64.")
    payload_size: int

    @classmethod
    def wrap(cls, payload: bytes, *, kind: str, source: str, errors: list[dict[str, str]], **where: object) -> DeadLetter:
        first = errors[0] if errors else {"field": "$", "reason": "invalid"}
        return cls(
            kind=kind,
            source=source,
            field=first["field"],
            reason=first["reason"],
            errors=errors,
            payload_b64=base64.b64encode(payload).decode("ascii"),
            payload_size=len(payload),
            **where,
        )

    @property
    def payload(self) -> bytes:
        return base64.b64decode(self.payload_b64)

    def encode(self) -> bytes:
        return codec.dumps(self)
