"""Bytes in, a valid event or a precise refusal out.

Each refusal names the field (dotted path), the offending value and the reason,
so that a device developer can fix the payload from the dead letter alone.
Time bounds are checked against `now`: at the edge (bridge, HTTP collector)
that is the arrival time; for events read from Kafka it is the record's Kafka
timestamp, so a backlog replayed after an outage is not refused for its age.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import pydantic

from schemas import codec
from schemas.deadletter import DeadLetter
from schemas.events import INPUT_TYPES, TimedEvent

E = TypeVar("E", bound=TimedEvent)


@dataclass(frozen=True)
class FieldError:
    field: str
    value: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "value": self.value, "reason": self.reason}

    def __str__(self) -> str:
        return f"{self.field}: {self.reason} (got {self.value})"


class InvalidEvent(ValueError):
    def __init__(self, kind: str, errors: list[FieldError]):
        self.kind = kind
        self.errors = errors
        super().__init__(f"invalid {kind}: " + "; ".join(str(e) for e in errors))

    @property
    def field(self) -> str:
        return self.errors[0].field

    @property
    def reason(self) -> str:
        return self.errors[0].reason

    def dead_letter(self, payload: bytes, source: str, **where: object) -> DeadLetter:
        return DeadLetter.wrap(payload, kind=self.kind, source=source, errors=[e.as_dict() for e in self.errors], **where)


@dataclass(frozen=True)
class Limits:
    max_payload_bytes: int = 64 * 1024
    max_future_skew_seconds: float = 300.0
    max_past_age_seconds: float = 7 * 24 * 3600.0

    @classmethod
    def from_settings(cls, settings: object) -> Limits:
        return cls(
            max_payload_bytes=settings.max_payload_bytes,  # type: ignore[attr-defined]
            max_future_skew_seconds=settings.max_future_skew_seconds,  # type: ignore[attr-defined]
            max_past_age_seconds=settings.max_past_age_seconds,  # type: ignore[attr-defined]
        )


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _from_pydantic(exc: pydantic.ValidationError) -> list[FieldError]:
    out = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "$"
        reason = err["msg"]
        if err["type"] == "missing":
            reason = "is required"
        elif err["type"] == "extra_forbidden":
            reason = "is not a known field"
        elif reason.startswith("Value error, "):
            reason = reason[len("Value error, ") :]
        out.append(FieldError(loc, _short(err.get("input")) if err["type"] != "missing" else "nothing", reason))
    return out


def decode_json(payload: bytes, kind: str, limits: Limits = Limits()) -> object:
    if len(payload) > limits.max_payload_bytes:
        raise InvalidEvent(kind, [FieldError("$", f"{len(payload)} bytes", f"payload exceeds {limits.max_payload_bytes} bytes")])
    try:
        return codec.loads(payload)
    except codec.JSONDecodeError as exc:
        raise InvalidEvent(kind, [FieldError("$", _short(bytes(payload[:60])), f"is not valid JSON: {exc}")]) from None


def validate(data: object, model: type[E], *, now: float | None = None, limits: Limits = Limits(), kind: str | None = None) -> E:
    """Validate decoded JSON into `model`; with `now`, also check the event time against the limits."""
    kind = kind or _kind_of(model)
    if not isinstance(data, dict):
        raise InvalidEvent(kind, [FieldError("$", _short(data), f"must be a JSON object, got {type(data).__name__}")])
    try:
        event = model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise InvalidEvent(kind, _from_pydantic(exc)) from None
    if now is not None:
        _check_time(event, now, limits, kind, data.get("ts"))
    return event


def _check_time(event: TimedEvent, now: float, limits: Limits, kind: str, sent: object) -> None:
    if event.ts > now + limits.max_future_skew_seconds:
        raise InvalidEvent(kind, [FieldError("ts", _short(sent), f"is {event.ts - now:.0f}s in the future (limit {limits.max_future_skew_seconds:.0f}s)")])
    if event.ts < now - limits.max_past_age_seconds:
        raise InvalidEvent(kind, [FieldError("ts", _short(sent), f"is {now - event.ts:.0f}s in the past (limit {limits.max_past_age_seconds:.0f}s)")])


def parse(payload: bytes, model: type[E], *, now: float | None = None, limits: Limits = Limits()) -> E:
    """Bytes to a valid event, or InvalidEvent naming field, value and reason.

    A valid payload takes pydantic's own JSON parser (about half the time of decoding first); a payload it
    refuses is decoded and validated again step by step, which is what names the reasons."""
    if len(payload) > limits.max_payload_bytes:
        decode_json(payload, _kind_of(model), limits)  # raises, naming the limit
    try:
        event = model.model_validate_json(payload)
    except ValueError:
        kind = _kind_of(model)
        return validate(decode_json(payload, kind, limits), model, now=now, limits=limits, kind=kind)
    if now is not None and not now - limits.max_past_age_seconds <= event.ts <= now + limits.max_future_skew_seconds:
        sent = codec.loads(payload).get("ts")  # the value as sent, for the reason
        _check_time(event, now, limits, _kind_of(model), sent)
    return event


def _kind_of(model: type) -> str:
    for kind, cls in INPUT_TYPES.items():
        if cls is model:
            return kind
    return model.__name__


@dataclass(frozen=True, slots=True)
class Checked(Generic[E]):
    """A payload and what validation made of it: the event, or why it was refused (exactly one of the two).

    Records read by several agents are checked once and shared (`streams.batches`: the clicks' storage and
    recommender agents); `checked` takes either this or the bytes."""

    payload: bytes
    event: E | None
    error: InvalidEvent | None


def check(payload: bytes, model: type[E], *, now: float | None = None, limits: Limits = Limits()) -> Checked[E]:
    """`parse`, with a refusal returned rather than raised."""
    try:
        return Checked(payload, parse(payload, model, now=now, limits=limits), None)
    except InvalidEvent as exc:
        return Checked(payload, None, exc)


def checked(value: bytes | Checked[E], model: type[E], *, now: float | None = None, limits: Limits = Limits()) -> Checked[E]:
    """A record's value as `Checked`: as it came if a reader before checked it, else checked now."""
    if isinstance(value, Checked):
        return value
    return check(value if isinstance(value, bytes) else bytes(value), model, now=now, limits=limits)
