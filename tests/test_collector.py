"""POST /collect and POST /catalogue: validation, per-event refusals, size limits, Kafka acks before 202.

The views run in-process against a stand-in for the Faust topics (no servers needed): what the
real services do with the records is covered by tests/test_commerce_e2e.py, and the real web server
(credentials, a body sent slowly in pieces) by tests/test_http_auth.py."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from schemas.deadletter import DeadLetter
from streams.web import collector


class FakeTopic:
    """Records sends; the returned future resolves only when `release()` is called (Kafka's ack)."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes]] = []
        self.pending: list[asyncio.Future] = []
        self.fail = False

    async def send(self, key: bytes, value: bytes, **kw: Any) -> asyncio.Future:
        if self.fail:
            raise ConnectionError("Kafka unreachable")
        self.sent.append((key, value))
        fut = asyncio.get_running_loop().create_future()
        self.pending.append(fut)
        return fut

    def release(self) -> None:
        for f in self.pending:
            if not f.done():
                f.set_result(None)


@pytest.fixture
def fake(monkeypatch) -> dict[str, FakeTopic]:
    topics = {name: FakeTopic() for name in ("topic_clicks", "topic_reviews", "topic_dead_letters")}
    monkeypatch.setattr(collector, "topics", topics)
    return topics


class Req:
    def __init__(self, body: bytes, declared: int | None = None) -> None:
        self.content_length = len(body) if declared is None else declared
        self.content = self
        self._body = body

    async def iter_any(self):  # noqa: ANN201 - aiohttp's StreamReader: the body in the pieces that arrived
        for i in range(0, len(self._body), 4096):
            yield self._body[i:i + 4096]


def click(**over: Any) -> dict:
    return {"event_id": "e1", "user_id": "u1", "session_id": "s1", "item_id": "i1", "action": "view", "ts": time.time()} | over


def review(**over: Any) -> dict:
    return {"review_id": "r1", "user_id": "u1", "item_id": "i1", "rating": 5, "text": "great", "ts": time.time()} | over


async def post(view_cls, body: Any, fake: dict[str, FakeTopic], raw: bytes | None = None, declared: int | None = None):
    view = view_cls.__new__(view_cls)
    view.json = lambda data, status=200: (status, data)  # the Faust View's json(), minus the web stack
    data = raw if raw is not None else json.dumps(body).encode()

    async def ack_later() -> None:  # Kafka acks a moment after the sends
        await asyncio.sleep(0.05)
        for t in fake.values():
            t.release()

    task = asyncio.create_task(ack_later())
    result = await view.post(Req(data, declared))
    await task
    return result


async def test_valid_batch_is_answered_202_only_after_kafka_acked(fake):
    started = time.monotonic()
    status, body = await post(collector.Collect, {"clicks": [click(), click(event_id="e2", user_id="u2")], "reviews": [review()]}, fake)
    assert (status, body) == (202, {"accepted": 3})
    assert time.monotonic() - started >= 0.05  # it waited for the acks
    assert [k for k, _ in fake["topic_clicks"].sent] == [b"u1", b"u2"]  # keyed by user
    assert [k for k, _ in fake["topic_reviews"].sent] == [b"i1"]  # keyed by item
    assert all(f.done() for t in fake.values() for f in t.pending)


async def test_typed_list_and_per_event_refusals_go_to_dead_letters(fake):
    batch = [{"type": "click", **click()}, {"type": "click", **click(action="teleport")}, {"type": "parcel", "x": 1},
             {"type": "review", **review(text="")}]
    status, body = await post(collector.Collect, batch, fake)
    assert status == 400 and body["accepted"] == 1
    assert [(r["index"], r["type"]) for r in body["rejected"]] == [(1, "click"), (2, None), (3, "review")]
    assert body["rejected"][0]["errors"][0]["field"] == "action"
    assert body["rejected"][1]["errors"][0]["field"] == "type"
    letters = [DeadLetter.model_validate_json(v) for _, v in fake["topic_dead_letters"].sent]
    assert [(d.source, d.kind, d.field) for d in letters] == [("http", "click", "action"), ("http", "http_event", "type"), ("http", "review", "text")]
    assert json.loads(letters[0].payload)["action"] == "teleport"  # the original event, to fix and re-send
    assert len(fake["topic_clicks"].sent) == 1


async def test_time_bounds_use_the_arrival_time(fake):
    status, body = await post(collector.Collect, {"clicks": [click(ts=time.time() + 3600)]}, fake)
    assert status == 400 and "in the future" in body["rejected"][0]["errors"][0]["reason"]


async def test_size_and_count_limits(fake, monkeypatch):
    status, body = await post(collector.Collect, None, fake, raw=b"{}", declared=collector.settings.commerce_collector_max_bytes + 1)
    assert status == 413 and body["accepted"] == 0
    big = json.dumps({"clicks": [click()]}).encode() + b" " * collector.settings.commerce_collector_max_bytes
    status, _ = await post(collector.Collect, None, fake, raw=big, declared=None)
    assert status == 413
    monkeypatch.setattr(collector.settings, "commerce_collector_max_events", 2)
    status, body = await post(collector.Collect, {"clicks": [click()] * 3}, fake)
    assert status == 413 and "limit of 2" in body["error"]
    assert not fake["topic_clicks"].sent


async def test_malformed_bodies(fake):
    status, body = await post(collector.Collect, None, fake, raw=b"not json")
    assert status == 400 and "not valid JSON" in body["error"]
    assert DeadLetter.model_validate_json(fake["topic_dead_letters"].sent[0][1]).kind == "http_batch"
    status, body = await post(collector.Collect, {"orders": []}, fake)
    assert status == 400 and "unknown batch keys" in body["error"]
    status, body = await post(collector.Collect, 42, fake)
    assert status == 400


async def test_kafka_down_is_a_503(fake):
    fake["topic_clicks"].fail = True
    status, body = await post(collector.Collect, {"clicks": [click()]}, fake)
    assert status == 503 and body["accepted"] == 0


async def test_catalogue_changes(fake, monkeypatch):
    cat = FakeTopic()
    monkeypatch.setattr(collector, "catalogue_topic", cat)
    fake["catalogue"] = cat
    status, body = await post(collector.Catalogue, [{"item_id": "i1", "action": "remove", "ts": time.time()}], fake)
    assert (status, body) == (202, {"accepted": 1}) and cat.sent[0][0] == b"i1"
    status, body = await post(collector.Catalogue, {"item_id": "i1", "action": "explode", "ts": time.time()}, fake)
    assert status == 400 and body["rejected"][0]["errors"][0]["field"] == "action"
