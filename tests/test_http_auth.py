"""The worker's web server against callers without the right credential, on a real worker (Kafka, ClickHouse,
aiohttp): every route is walked from the app's router, so a route added without a rule is caught here.

Also: API keys revoked by editing their file, the login cookie, the write rules (JSON, Origin, Host), acks
of unknown alarms (404, and no device state from commands), Faust's own views, a 300 KB batch sent slowly
in pieces, bodies over the limit, and no secret in /stats or the log."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from schemas import codec
from schemas.events import Alert
from streams.sinks.clickhouse import connect
from streams.web.credentials import Sessions
from streams.web.guard import Guard
from tests.test_pipeline import committed_equals_end, produce, wait_until
from tests.workers import WorkerProcess, fresh_topics
from schemas.settings import Settings

pytestmark = [pytest.mark.infra, pytest.mark.slow]

TOKEN = f"op-{secrets.token_urlsafe(18)}"
KEY_A, KEY_B = f"key-a-{secrets.token_urlsafe(18)}", f"key-b-{secrets.token_urlsafe(18)}"
PUBLIC_PATHS = {"/", "/static", "/login", "/logout"}  # tests/ says which routes are public, not the code under test
MAX_BYTES = 400_000
FOREIGN = "http://evil.example"


@dataclass
class Web:
    worker: WorkerProcess
    keys: Path
    env: dict[str, str]
    ch: object

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.worker.web_port}"

    def call(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict, dict]:
        """(status, JSON body or {}, response headers) of one request; no credential unless `headers` has one."""
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=15) as r:
                raw, status, hdrs = r.read(), r.status, dict(r.headers)
        except urllib.error.HTTPError as exc:
            raw, status, hdrs = exc.read(), exc.code, dict(exc.headers)
        try:
            return status, json.loads(raw or b"{}"), hdrs
        except ValueError:
            return status, {"text": raw.decode(errors="replace")}, hdrs

    def operator(self, method: str, path: str, payload: object = None, **headers: str) -> tuple[int, dict, dict]:
        body = None if payload is None else json.dumps(payload).encode()
        return self.call(method, path, body, {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json", **headers})

    def devices(self) -> set[str]:
        status, body, _ = self.operator("GET", "/sensors/devices")
        assert status == 200, body
        return set(body["devices"])


def click(i: int, tag: str, pad: int = 0) -> dict:
    return {"event_id": f"e-{tag}-{i}", "user_id": f"u-{tag}-{i % 50}", "session_id": f"s-{tag}-{i % 50}",
            "item_id": f"item-{i % 40:03d}{'x' * pad}", "action": "view", "ts": time.time()}


@pytest.fixture(scope="module")
async def site(stack, server_url, tmp_path_factory):
    from wharf.infra.kafka import ensure_topics

    u = uuid.uuid4().hex[:10]
    tmp = tmp_path_factory.mktemp("http-auth")
    keys = tmp / "api-keys"
    keys.write_text(f"# shop backends\n{KEY_A}\n{KEY_B}  # the second shop\n")
    env = fresh_topics(u)
    env |= {"WHARF_APP_ID": f"wharf-test-auth-{u}", "WHARF_STATE_DIR": str(tmp / "state"), "WHARF_CLICKHOUSE_URL": f"{server_url}/auth_{u}",
            "WHARF_WEB_API_KEYS": "", "WHARF_WEB_API_KEYS_FILE": str(keys), "WHARF_WEB_OPERATOR_TOKENS": TOKEN,
            "WHARF_COMMERCE_COLLECTOR_MAX_BYTES": str(MAX_BYTES), "WHARF_COMMERCE_COLLECTOR_MAX_EVENTS": "2000",
            "WHARF_COMMERCE_SENTIMENT_ENCODER": "hashing", "WHARF_SINK_BATCH_SECONDS": "0.3",
            "WHARF_SENSOR_MODEL_OPTIONS": '{"use_forecaster": false}'}
    await ensure_topics(stack, [v for k, v in env.items() if k.startswith("WHARF_TOPIC_")], stack.topic_partitions)
    worker = await asyncio.to_thread(WorkerProcess(env, web_port=stack.web_port + 40, log=tmp / "worker.log").start)
    ch = connect(env["WHARF_CLICKHOUSE_URL"])
    try:
        yield Web(worker, keys, env, ch)
    finally:
        worker.stop()
        ch.command(f"DROP DATABASE IF EXISTS {ch.database}")


def worker_routes() -> list[tuple[str, str]]:
    """(method, route template) of every route the worker's aiohttp server has: the same modules `wharf worker` imports."""
    import agents  # noqa: F401
    import streams.web.views  # noqa: F401
    from streams.runtime.app import app

    return sorted({(r.method, r.resource.canonical) for r in app.web.web_app.router.routes() if r.resource is not None})


def concrete(template: str) -> str:
    return {"/static": "/static/uPlot.min.css"}.get(template, template.replace("{user_id}", "u1").replace("{kind}", "item").replace("{key}", "k1"))


async def test_every_route_refuses_callers_without_a_valid_credential(site: Web):
    routes = worker_routes()
    assert {"/stats", "/api/dashboard", "/api/alarms/ack", "/collect", "/catalogue", "/recommendations/{user_id}", "/commerce/stats",
            "/sensors/devices"} <= {path for _, path in routes}, routes
    checked = 0
    for method, template in routes:
        path = concrete(template)
        if template in PUBLIC_PATHS:
            if method == "GET":
                assert site.call("GET", path)[0] == 200, path
            continue
        body = b"{}" if method == "POST" else None
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Cookie": "wharf_session=v1.9999999999.0123456789abcdef.forged"}):
            status, answer, hdrs = site.call(method, path, body, {"Content-Type": "application/json", **headers})
            assert status == 401, (method, path, headers, status, answer)
            assert method == "HEAD" or ("error" in answer and hdrs.get("WWW-Authenticate") == "Bearer"), (method, path, answer)
        checked += 1
    assert checked >= 16
    # Faust's own views are not served, and unknown paths do not tell who may see them.
    for path in ("/router/", "/router/topics", "/table/", "/table/sensor-state/", "/graph/", "/performance/", "/assignment/", "/nope"):
        assert site.call("GET", path)[0] == 401, path
        assert site.operator("GET", path)[0] == 404, path


async def test_api_keys_come_from_a_file_and_a_deleted_line_is_revoked_at_once(site: Web):
    batch = json.dumps({"clicks": [click(0, "keys")]}).encode()
    for headers in ({"Authorization": f"Bearer {KEY_A}"}, {"X-API-Key": KEY_B}):
        status, body, _ = site.call("POST", "/collect", batch, {"Content-Type": "application/json", **headers})
        assert (status, body) == (202, {"accepted": 1}), headers
    recs = lambda key: site.call("GET", "/recommendations/u-keys-0?k=3", None, {"X-API-Key": key})[0]  # noqa: E731
    await wait_until(lambda: recs(KEY_B) == 200, 90, "recommendations for a shop's key (503 until partitions are assigned)")
    # A service key is not an operator's, nor the other way round.
    assert site.call("GET", "/stats", None, {"Authorization": f"Bearer {KEY_A}"})[0] == 401
    assert site.operator("POST", "/collect", {"clicks": []})[0] == 401
    assert site.call("POST", "/collect", batch, {"Content-Type": "application/json", "X-API-Key": KEY_A[:-1]})[0] == 401

    site.keys.write_text(f"{KEY_A}\n")  # the second shop's key is revoked, no restart
    status, body, _ = site.call("POST", "/collect", batch, {"Content-Type": "application/json", "X-API-Key": KEY_B})
    assert status == 401, body
    assert recs(KEY_B) == 401 and recs(KEY_A) == 200
    assert site.call("POST", "/collect", batch, {"Content-Type": "application/json", "X-API-Key": KEY_A})[0] == 202
    site.keys.write_text(f"{KEY_A}\n{KEY_B}\n")


async def test_login_sets_a_strict_http_only_session_cookie(site: Web):
    status, body, _ = site.call("POST", "/login", json.dumps({"token": "guess"}).encode(), {"Content-Type": "application/json"})
    assert status == 401, body
    assert site.call("POST", "/login", json.dumps({"token": TOKEN}).encode(), {"Content-Type": "application/json", "Origin": FOREIGN})[0] == 403
    status, body, headers = site.call("POST", "/login", json.dumps({"token": TOKEN}).encode(), {"Content-Type": "application/json"})
    assert status == 200, body
    cookie = headers["Set-Cookie"]
    assert cookie.startswith("wharf_session=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie, cookie
    assert TOKEN not in cookie
    session = cookie.split(";")[0]
    assert site.call("GET", "/api/dashboard", None, {"Cookie": session})[0] == 200
    tampered = session[:-2] + ("AA" if not session.endswith("AA") else "BB")
    assert site.call("GET", "/api/dashboard", None, {"Cookie": tampered})[0] == 401
    # A wrong header is refused whatever cookie comes with it.
    assert site.call("GET", "/api/dashboard", None, {"Cookie": session, "Authorization": "Bearer wrong"})[0] == 401
    # Writes with the cookie follow the browser rules: JSON, own Origin, own Host.
    ack = json.dumps({"alarm_id": "ghost-0/anomaly/1"}).encode()
    assert site.call("POST", "/api/alarms/ack", ack, {"Cookie": session, "Content-Type": "text/plain"})[0] == 415
    assert site.call("POST", "/api/alarms/ack", ack, {"Cookie": session, "Content-Type": "application/json", "Origin": FOREIGN})[0] == 403
    assert site.call("POST", "/api/alarms/ack", ack, {"Cookie": session, "Content-Type": "application/json", "Origin": site.base})[0] == 404


async def test_acks_need_json_own_origin_and_a_known_alarm_and_never_create_devices(site: Web, stack):
    env = site.env
    now = time.time()
    reading = {"site": "s1", "zone": "z1", "device_id": "dev-auth-real", "device_type": "cold_room", "ts": now, "seq": 1,
               "metrics": {"temperature": 4.0}}
    await produce(stack, env["WHARF_TOPIC_SENSOR_READINGS"], [(b"dev-auth-real", codec.dumps(reading))])
    await wait_until(lambda: "dev-auth-real" in site.devices(), 60, "the real device's state")

    known = "dev-auth-1/rule:temperature/1700000000000"
    item_alarm = "bk-1/sentiment_drop/1700000000000"
    alerts = [Alert(ts=now, alarm_id=known, alarm_type="rule:temperature", source_type="device", source_id="dev-auth-1", severity="MAJOR",
                    status="ACTIVE_UNACK", start_ts=now, message="too warm"),
              Alert(ts=now, alarm_id=item_alarm, alarm_type="sentiment_drop", source_type="item", source_id="bk-1", severity="MINOR",
                    status="ACTIVE_UNACK", start_ts=now, message="reviews turned")]
    await produce(stack, env["WHARF_TOPIC_ALERTS"], [(a.alarm_id.encode(), a.model_dump_json().encode()) for a in alerts])
    count = lambda: site.ch.query(f"SELECT count() FROM {site.ch.table('alerts')}")[0][0]  # noqa: E731
    await wait_until(lambda: count() >= 2, 60, "the alarms stored")
    before = site.devices()

    # The reported request: another site's page, text/plain, no credential.
    status, _, _ = site.call("POST", "/api/alarms/ack", json.dumps({"alarm_id": known}).encode(), {"Origin": FOREIGN, "Content-Type": "text/plain"})
    assert status == 401
    assert site.operator("POST", "/api/alarms/ack", {"alarm_id": known}, Origin=FOREIGN)[0] == 403
    assert site.operator("POST", "/api/alarms/ack", {"alarm_id": known}, Host="evil.example")[0] == 403
    assert site.operator("POST", "/api/alarms/ack", {"alarm_id": known}, **{"Content-Type": "text/plain"})[0] == 415
    assert site.operator("POST", "/api/alarms/ack", {"alarm_id": "not an id'\"<x>"})[0] == 400
    for i in range(20):
        status, body, _ = site.operator("POST", "/api/alarms/ack", {"alarm_id": f"ghost-{i}/anomaly/{1700000000000 + i}"})
        assert status == 404, body
    assert site.operator("POST", "/api/alarms/ack", {"alarm_id": item_alarm})[0] == 409
    status, body, _ = site.operator("POST", "/api/alarms/ack", {"alarm_id": known}, Origin=site.base)
    assert status == 202 and body["sent"]["alarm_id"] == known, body

    # Commands that reach the device owners by other ways (Kafka, `wharf alerts ack`) for ids without state.
    commands = [(f"ghost-k{i}".encode(), codec.dumps({"command": "ack", "alarm_id": f"ghost-k{i}/anomaly/1", "ts": now, "by": "test"}))
                for i in range(50)]
    await produce(stack, env["WHARF_TOPIC_SENSOR_COMMANDS"], commands + [(b"dev-auth-real", codec.dumps(
        {"command": "ack", "alarm_id": "dev-auth-real/anomaly/1", "ts": now, "by": "test"}))])
    deadline = time.monotonic() + 60  # the worker commits a command's offset once it has applied it
    while not await committed_equals_end(stack, env["WHARF_APP_ID"], env["WHARF_TOPIC_SENSOR_COMMANDS"], stack.topic_partitions):
        assert time.monotonic() < deadline, "the commands were not consumed"
        await asyncio.sleep(0.5)
    assert site.devices() == before == {"dev-auth-real"}


def raw_post(port: int, path: str, headers: dict[str, str], pieces: list[bytes], pause: float) -> tuple[int, dict]:
    """An HTTP/1.1 request over a plain socket, its body sent in `pieces` with `pause` seconds between them."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock.sendall(head.encode() + b"\r\n")
        try:
            for piece in pieces:
                sock.sendall(piece)
                time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the end: the answer is already there
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    body = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), json.loads(body or b"{}")


async def test_a_300_kb_batch_sent_slowly_in_pieces_is_accepted_whole_and_stored(site: Web):
    tag = uuid.uuid4().hex[:6]
    clicks = [click(i, tag, pad=40) for i in range(1700)]
    body = json.dumps({"clicks": clicks}).encode()
    assert 300_000 <= len(body) <= MAX_BYTES, len(body)
    pieces = [body[i:i + 1500] for i in range(0, len(body), 1500)]
    headers = {"Content-Type": "application/json", "X-API-Key": KEY_A, "Content-Length": str(len(body))}
    status, answer = await asyncio.to_thread(raw_post, site.worker.web_port, "/collect", headers, pieces, 0.01)
    assert (status, answer) == (202, {"accepted": len(clicks)})
    # another such batch, chunked (no declared length)
    tag2 = uuid.uuid4().hex[:6]
    body2 = json.dumps({"clicks": [click(i, tag2, pad=40) for i in range(1700)]}).encode()
    chunked = [b"%x\r\n%s\r\n" % (len(body2[i:i + 1500]), body2[i:i + 1500]) for i in range(0, len(body2), 1500)] + [b"0\r\n\r\n"]
    status, answer = await asyncio.to_thread(raw_post, site.worker.web_port, "/collect",
                                             {"Content-Type": "application/json", "X-API-Key": KEY_A, "Transfer-Encoding": "chunked"}, chunked, 0.002)
    assert (status, answer) == (202, {"accepted": 1700})
    stored = lambda t: site.ch.query(f"SELECT uniqExact(event_id) FROM {site.ch.table('clicks')} WHERE event_id LIKE 'e-{t}-%'")[0][0]  # noqa: E731
    await wait_until(lambda: stored(tag) == len(clicks) and stored(tag2) == 1700, 90, "every click of both batches stored")


async def test_bodies_over_the_limit_are_413(site: Web):
    body = json.dumps({"clicks": [click(i, "big", pad=40) for i in range(2500)]}).encode()
    assert len(body) > MAX_BYTES
    headers = {"Content-Type": "application/json", "X-API-Key": KEY_A}
    status, answer = await asyncio.to_thread(raw_post, site.worker.web_port, "/collect", {**headers, "Content-Length": str(len(body))},
                                             [body], 0)
    assert status == 413 and answer["accepted"] == 0, answer
    pieces = [body[i:i + 8192] for i in range(0, len(body), 8192)]
    chunked = [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces] + [b"0\r\n\r\n"]
    status, answer = await asyncio.to_thread(raw_post, site.worker.web_port, "/collect", {**headers, "Transfer-Encoding": "chunked"}, chunked, 0)
    assert status == 413 and "exceeds" in answer["error"], answer


async def test_no_secret_in_stats_or_the_log(site: Web):
    status, body, _ = site.operator("GET", "/stats")
    assert status == 200
    text = json.dumps(body) + json.dumps(site.operator("GET", "/commerce/stats")[1])
    log = Path(site.worker.log).read_text(errors="replace")
    for secret in (TOKEN, KEY_A, KEY_B):
        assert secret not in text and secret not in log


# --- the guard alone, on a real aiohttp server in this process ------------------------------------------------------


async def test_a_failing_handler_answers_a_generic_500_and_logs_the_trace_under_its_id(caplog):
    guard = Guard.from_settings(Settings(web_operator_tokens=TOKEN, web_port=1))

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError(f"secret detail {KEY_A}")

    application = web.Application(middlewares=[guard.middleware])
    application.router.add_get("/boom", boom)
    caplog.set_level(logging.ERROR, logger="streams.web.guard")
    async with TestClient(TestServer(application)) as client:
        r = await client.get("/boom")
        assert r.status == 401
        r = await client.get("/boom", headers={"Authorization": f"Bearer {TOKEN}"})
        text = await r.text()
    assert r.status == 500 and r.content_type == "application/json"
    answer = json.loads(text)
    assert answer["error"] == "internal error" and len(answer["id"]) == 12
    assert "secret detail" not in text and "Traceback" not in text and KEY_A not in text
    assert any(answer["id"] in rec.getMessage() and rec.exc_info for rec in caplog.records)


def test_sessions_expire_and_end_with_their_token():
    sessions = Sessions(b"k" * 32, 60.0)
    cookie = sessions.issue(TOKEN, now=1000.0)
    assert sessions.verify(cookie, (TOKEN,), now=1030.0)
    assert not sessions.verify(cookie, (TOKEN,), now=1061.0)  # expired
    assert not sessions.verify(cookie, ("another-token",), now=1030.0)  # its token was revoked
    assert not Sessions(b"x" * 32, 60.0).verify(cookie, (TOKEN,), now=1030.0)  # another signing key
    forged = cookie.replace(".1060.", ".9999999999.")
    assert forged != cookie and not sessions.verify(forged, (TOKEN,), now=1030.0)
