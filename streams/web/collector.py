"""HTTP collector on the worker's web server: shops POST batches of clicks and reviews, and catalogue changes.

`POST /collect` takes `{"clicks": [...], "reviews": [...]}` or a list of typed events
(`{"type": "click" | "review", ...}`); see docs/commerce-api.md. Every event is
validated like the Kafka path does (schemas.validation, time bounds against the
arrival time). Valid events are produced to their topic (clicks keyed by user_id,
reviews by item_id) and the answer waits until Kafka has acked every one of them
(acks=all): a 202 means the events are durable. Invalid events go to the dead-letter
topic (source "http") with every reason, and the answer is 400 listing them by index;
the valid events of the same batch are still accepted (`accepted` says how many) and
must not be re-sent. Kafka unreachable: 503 and nothing is guaranteed, re-send the batch.

`POST /catalogue` takes one catalogue change or a list (`item_id`, `action`
"remove" | "add", `ts`, optional `category`, `price`) onto the catalogue topic.

Both need an API key and `Content-Type: application/json` (`streams.web.guard`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

from faust.web import Request, Response, View

from schemas import codec
from schemas.events import CatalogueChange, ClickEvent, Review, TimedEvent
from schemas.validation import FieldError, InvalidEvent, validate
from streams.runtime.app import app, commerce_topics, limits, settings, topics
from streams.sinks.ingest import send_dead_letter

log = logging.getLogger(__name__)

catalogue_topic = commerce_topics.catalogue  # where `POST /catalogue` writes (streams/runtime/topics.py)


# type -> (model, kind for validation/dead letters, topic attribute or topic, key field)
KINDS: dict[str, tuple[type[TimedEvent], str, Any, str]] = {
    "click": (ClickEvent, "click", "topic_clicks", "user_id"),
    "review": (Review, "review", "topic_reviews", "item_id"),
}
BATCH_KEYS = {"clicks": "click", "reviews": "review"}


class BodyError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


async def read_body(request: Request, limit: int) -> bytes:
    """The whole request body, however it arrives (one `content.read(n)` returns what is buffered, at most
    64 KiB: a larger body was cut). More than `limit` bytes is a 413: before reading when the length is
    declared, and as soon as the bytes read pass it when it is not (chunked)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise BodyError(413, f"body of {declared} bytes exceeds {limit} bytes")
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise BodyError(413, f"body exceeds {limit} bytes")
    return bytes(body)


def split_batch(data: Any) -> list[tuple[str | None, Any]]:
    """(type, event object) per event, in request order; type None when it cannot be told."""
    if isinstance(data, dict):
        unknown = set(data) - BATCH_KEYS.keys()
        if unknown:
            raise BodyError(400, f"unknown batch keys {sorted(unknown)}; expected 'clicks' and/or 'reviews'")
        out: list[tuple[str | None, Any]] = []
        for key, kind in BATCH_KEYS.items():
            events = data.get(key, [])
            if not isinstance(events, list):
                raise BodyError(400, f"'{key}' must be a list of events")
            out += [(kind, e) for e in events]
        return out
    if isinstance(data, list):
        out = []
        for e in data:
            kind = e.get("type") if isinstance(e, dict) else None
            if isinstance(e, dict) and kind in KINDS:
                e = {k: v for k, v in e.items() if k != "type"}
            out.append((kind if kind in KINDS else None, e))
        return out
    raise BodyError(400, "body must be a JSON object {\"clicks\": [...], \"reviews\": [...]} or a list of typed events")


def check(kind: str | None, obj: Any, now: float) -> TimedEvent:
    if kind is None:
        got = obj.get("type") if isinstance(obj, dict) else None
        raise InvalidEvent("http_event", [FieldError("type", repr(got), f"must be one of {sorted(KINDS)}")])
    model = KINDS[kind][0]
    event = validate(obj, model, now=now, limits=limits, kind=kind)
    return event


async def collect(data: Any, now: float) -> tuple[int, list[dict[str, Any]]]:
    """Validate, produce and wait for Kafka; returns (accepted, refusals)."""
    items = split_batch(data)
    if len(items) > settings.commerce_collector_max_events:
        raise BodyError(413, f"{len(items)} events exceed the limit of {settings.commerce_collector_max_events} per request")
    futs = []
    refused: list[dict[str, Any]] = []
    for i, (kind, obj) in enumerate(items):
        raw = codec.dumps(obj)
        try:
            if len(raw) > limits.max_payload_bytes:
                raise InvalidEvent(kind or "http_event", [FieldError("$", f"{len(raw)} bytes", f"event exceeds {limits.max_payload_bytes} bytes")])
            event = check(kind, obj, now)
        except InvalidEvent as exc:
            futs.append(send_dead_letter(topics["topic_dead_letters"], exc, raw, "http"))
            refused.append({"index": i, "type": kind, "errors": [e.as_dict() for e in exc.errors]})
            continue
        _model, _kind, topic_attr, key_field = KINDS[kind]  # type: ignore[index]
        topic = topics[topic_attr]
        futs.append(_send(topic, getattr(event, key_field).encode(), codec.dumps(event)))
    await asyncio.gather(*futs)
    return len(items) - len(refused), refused


async def _send(topic: Any, key: bytes, value: bytes) -> None:
    fut = await topic.send(key=key, value=value)
    await fut


def _json(view: View, body: dict[str, Any], status: int) -> Response:
    return view.json(body, status=status)


@app.page("/collect")
class Collect(View):
    async def post(self, request: Request) -> Response:
        now = time.time()
        try:
            body = await read_body(request, settings.commerce_collector_max_bytes)
            try:
                data = codec.loads(body)
            except codec.JSONDecodeError as exc:
                err = InvalidEvent("http_batch", [FieldError("$", repr(body[:60]), f"is not valid JSON: {exc}")])
                await send_dead_letter(topics["topic_dead_letters"], err, body, "http")
                raise BodyError(400, str(err)) from None
            accepted, refused = await collect(data, now)
        except BodyError as exc:
            return _json(self, {"error": str(exc), "accepted": 0}, exc.status)
        except Exception as exc:  # noqa: BLE001 - Kafka unreachable or timed out: nothing is guaranteed
            eid = secrets.token_hex(6)
            log.error("collect failed (error id %s)", eid, exc_info=exc)
            return _json(self, {"error": f"not stored, re-send the batch ({type(exc).__name__})", "id": eid, "accepted": 0}, 503)
        if refused:
            return _json(self, {"accepted": accepted, "rejected": refused}, 400)
        return _json(self, {"accepted": accepted}, 202)


@app.page("/catalogue")
class Catalogue(View):
    async def post(self, request: Request) -> Response:
        now = time.time()
        try:
            body = await read_body(request, settings.commerce_collector_max_bytes)
            data = codec.loads(body)
        except BodyError as exc:
            return _json(self, {"error": str(exc)}, exc.status)
        except codec.JSONDecodeError as exc:
            return _json(self, {"error": f"body is not valid JSON: {exc}"}, 400)
        changes = data if isinstance(data, list) else [data]
        if len(changes) > settings.commerce_collector_max_events:
            return _json(self, {"error": f"more than {settings.commerce_collector_max_events} changes"}, 413)
        valid, refused = [], []
        for i, obj in enumerate(changes):
            try:
                valid.append(validate(obj, CatalogueChange, now=now, limits=limits, kind="catalogue_change"))
            except InvalidEvent as exc:
                refused.append({"index": i, "errors": [e.as_dict() for e in exc.errors]})
        if refused:  # a catalogue change is an operator action: all or nothing
            return _json(self, {"accepted": 0, "rejected": refused}, 400)
        try:
            await asyncio.gather(*(_send(catalogue_topic, c.item_id.encode(), codec.dumps(c)) for c in valid))
        except Exception as exc:  # noqa: BLE001
            eid = secrets.token_hex(6)
            log.error("catalogue change failed (error id %s)", eid, exc_info=exc)
            return _json(self, {"error": f"not stored, re-send ({type(exc).__name__})", "id": eid, "accepted": 0}, 503)
        return _json(self, {"accepted": len(valid)}, 202)
