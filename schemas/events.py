"""Wharf's event types, as they travel through Kafka.

Every event carries a schema version `v`. Timestamps are UTC epoch seconds
(float) everywhere inside Wharf; devices may also send ISO-8601 strings with a
time zone. Input events (`SensorReading`, `ClickEvent`, `Review`) are validated
by `schemas.validation`; derived events are produced by Wharf itself.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, StringConstraints, field_validator

SCHEMA_VERSION = 1

Ident = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")]
"""Ids that are also MQTT topic levels: no `/`, `+`, `#`, spaces; 1–64 chars."""

MetricName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]

INT64_MAX = 2**63 - 1
"""Integers are bounded by what every consumer holds: ClickHouse's 64-bit columns and the JSON codec (2^64 was
accepted once and then stopped both sensor writers)."""
METRIC_ABS_MAX = 1e15
"""Metric magnitudes beyond this are refused: the detectors square values, and 1e200 would turn a device's
model state into inf/NaN for good."""
LATEST_TS = 4_102_444_800.0
"""2100-01-01T00:00Z: the last time every ClickHouse DateTime holds (a backlog read from Kafka is checked against
its own record time, which a producer sets, so the bound must also be absolute)."""


DeviceType = Literal["cold_room", "conveyor", "forklift", "dock_door"]
"""A Literal, not an enum: the same values and refusal, validated in pydantic-core without a Python enum lookup per
event (0.3 µs of the bridge's ~3 µs validation)."""


class Action(StrEnum):
    VIEW = "view"
    ADD_TO_CART = "add_to_cart"
    REMOVE = "remove"
    PURCHASE = "purchase"


class Severity(StrEnum):
    CRITICAL = "CRITICAL"
    MAJOR = "MAJOR"
    MINOR = "MINOR"
    WARNING = "WARNING"


class AlarmStatus(StrEnum):
    ACTIVE_UNACK = "ACTIVE_UNACK"
    ACTIVE_ACK = "ACTIVE_ACK"
    CLEARED_UNACK = "CLEARED_UNACK"
    CLEARED_ACK = "CLEARED_ACK"


def to_epoch(value: Any) -> float:
    """Accept epoch seconds or an ISO-8601 string with a zone; reject the ambiguous rest."""
    if isinstance(value, bool):
        raise ValueError("must be epoch seconds or an ISO-8601 string, not a boolean")
    if isinstance(value, int | float):
        if value > 1e11:
            raise ValueError("looks like epoch milliseconds; send epoch seconds (a float may carry the fraction)")
        if value < -1e11:
            raise ValueError("must be after 1970-01-01")
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("is not an ISO-8601 timestamp") from None
        if parsed.tzinfo is None:
            raise ValueError("ISO-8601 timestamp must include a time zone (e.g. 'Z' or '+01:00')")
        return parsed.timestamp()
    raise ValueError("must be epoch seconds or an ISO-8601 string")


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_max_length=8192, use_enum_values=True)

    v: Literal[1] = SCHEMA_VERSION


class TimedEvent(Event):
    ts: float = Field(..., description="Event time, UTC epoch seconds.")

    @field_validator("ts", mode="before")
    @classmethod
    def _epoch(cls, value: Any) -> Any:
        """The conversion and the bounds in one Python call: every event pays for each (the bridge validates
        ~100,000 a second). The common case, epoch seconds as a float in range, takes one test."""
        if value.__class__ is float and 0.0 < value < LATEST_TS:
            return value
        ts = to_epoch(value)
        if ts <= 0:
            raise ValueError("must be after 1970-01-01")
        if ts >= LATEST_TS:
            raise ValueError("must be before 2100-01-01")
        return ts


MetricValue = Annotated[float, Strict(), Field(ge=-METRIC_ABS_MAX, le=METRIC_ABS_MAX)]
"""A metric's value, checked in pydantic-core: a JSON number (an integer becomes a float) within ±METRIC_ABS_MAX; a
boolean, string or null is refused. Accepts exactly what `_no_bool_metrics` accepts; that names the reasons."""


class SensorReading(TimedEvent):
    """One telemetry message of one device: several metrics measured at one instant."""

    # The metrics are checked without a Python validator (`MetricValue`): a model class with a Python field validator
    # took about 1 us more a reading to make, even from a schema without it (2.5 against 3.4 us a `validate_json`).
    # A refused reading is validated again by `SensorReadingRefusal`, which names the reasons as devices read them.

    site: Ident
    zone: Ident
    device_id: Ident
    device_type: DeviceType
    seq: int = Field(..., ge=0, le=INT64_MAX, description="Per-device sequence number, increasing by one per reading.")
    metrics: dict[MetricName, MetricValue] = Field(..., min_length=1, max_length=32)


class SensorReadingRefusal(SensorReading):
    """`SensorReading` with the metrics checked in Python, used only to name why a reading was refused
    (`schemas.validation.validate`): the first bad metric, by name, and why (one error for the field `metrics`)."""

    metrics: dict[MetricName, float] = Field(..., min_length=1, max_length=32)

    @field_validator("metrics", mode="before")
    @classmethod
    def _no_bool_metrics(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for name, metric in value.items():
                if metric.__class__ is float and -METRIC_ABS_MAX <= metric <= METRIC_ABS_MAX:
                    continue  # the common case, in one test
                if isinstance(metric, bool) or not isinstance(metric, int | float):
                    raise ValueError(f"metric {str(name)[:40]!r} must be a number, got {type(metric).__name__}")
                if not -METRIC_ABS_MAX <= metric <= METRIC_ABS_MAX:
                    raise ValueError(f"metric {str(name)[:40]!r} must be within ±{METRIC_ABS_MAX:g}")
        return value


class DeviceStatus(TimedEvent):
    """Birth (`online`) and last-will (`offline`) messages of a device."""

    site: Ident
    zone: Ident
    device_id: Ident
    device_type: DeviceType | None = None
    state: Literal["online", "offline"]
    interval_s: float | None = Field(None, gt=0, le=86400, description="The device's nominal reporting interval.")


class ClickEvent(TimedEvent):
    event_id: Ident
    user_id: Ident
    session_id: Ident
    item_id: Ident
    action: Action
    price: float | None = Field(None, ge=0, le=1e7)
    category: Ident | None = None


class Review(TimedEvent):
    review_id: Ident
    user_id: Ident
    item_id: Ident
    seller_id: Ident | None = None
    rating: int | None = Field(None, ge=1, le=5)
    text: str = Field(..., min_length=1, max_length=5000)


# --- derived events ----------------------------------------------------------


class AnomalyScore(TimedEvent):
    site: str
    zone: str
    device_id: str
    device_type: str
    seq: int
    score: float = Field(..., ge=0, le=1, description="Calibrated ensemble score in [0, 1].")
    threshold: float
    is_anomaly: bool
    metric: str = Field(..., description="The metric that scored highest.")
    value: float
    components: dict[str, float] = Field(default_factory=dict, description="Score of each detector.")


class Alert(TimedEvent):
    """One state of an alarm's life; the latest event per `alarm_id` is its current state."""

    alarm_id: str
    alarm_type: str
    source_type: Literal["device", "item"]
    source_id: str
    site: str | None = None
    zone: str | None = None
    severity: Severity
    status: AlarmStatus
    start_ts: float
    end_ts: float | None = None
    ack_ts: float | None = None
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class RecommendedItem(BaseModel):
    item_id: str
    score: float
    reason: str


class Recommendation(TimedEvent):
    user_id: str
    k: int
    items: list[RecommendedItem]


class SentimentScore(TimedEvent):
    review_id: str
    user_id: str
    item_id: str
    seller_id: str | None = None
    rating: int | None = None
    score: float = Field(..., ge=-1, le=1)
    label: Literal["positive", "negative", "neutral"]
    model: str
    text: str


REFUSALS: dict[type[TimedEvent], type[TimedEvent]] = {SensorReading: SensorReadingRefusal}
"""Models whose refusals are named by another model (`schemas.validation.validate`), which refuses the same input."""

INPUT_TYPES: dict[str, type[TimedEvent]] = {
    "sensor_reading": SensorReading,
    "device_status": DeviceStatus,
    "click": ClickEvent,
    "review": Review,
}


class CatalogueChange(TimedEvent):
    """An item leaves (`remove`) or re-enters (`add`) the catalogue."""

    item_id: Ident
    action: Literal["remove", "add"]
    category: Ident | None = None
    price: float | None = Field(None, ge=0, le=1e7)
