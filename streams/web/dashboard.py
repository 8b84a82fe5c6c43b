"""The operations dashboard, served by the worker that owns ClickHouse (chdb) or by any worker (server).

`GET /` is a static page (uPlot 1.6.32 from npm, vendored under streams/web/static,
MIT) that polls `GET /api/dashboard`, which runs every panel's query from
`streams.sinks.queries` in one call. The ack button posts to
`/api/alarms/ack` (JSON `{"alarm_id": ...}`), which hands an ack command to the device's owning
agent through the commands topic.

The page itself holds no data; everything it shows needs an operator login: `POST /login` with
`{"token": ...}` (an operator token) sets an HttpOnly, SameSite=Strict cookie holding a signed
session (`streams.web.credentials.Sessions`), `POST /logout` drops it. Who may call what is decided
in `streams.web.guard`, in front of these views.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

from faust.web import Request, Response, View

from schemas import codec
from streams.runtime.app import app, settings, storage, topics
from streams.web.guard import error, failure, installed
from streams.sinks.queries import DashboardQueries

guard = installed(app)  # `streams.web.views` installs it before it imports these views
STATIC = Path(__file__).with_name("static")
app.web.add_static("/static/", STATIC)

MAX_LOGIN_BYTES = 4096
# `source/type/start_ms` (online_models.alarms.alarm_id): source an Ident, type e.g. `rule:temperature`.
ALARM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}/[a-z_]{1,32}(:[a-z][a-z0-9_]{0,31})?/[0-9]{1,16}$")
ACKABLE = ("ACTIVE_UNACK", "CLEARED_UNACK")


def truth_file() -> Path:
    """Where `wharf simulate --truth` (and the demo) write the injected faults."""
    return settings.state_dir / "faults.jsonl"


@app.page("/")
class Dashboard(View):
    async def get(self, request: Request) -> Response:
        return self.html((STATIC / "dashboard.html").read_text())


@app.page("/login")
class Login(View):
    """Trade an operator token for a session cookie (the dashboard's login form)."""

    async def post(self, request: Request) -> Response:
        if (request.content_length or 0) > MAX_LOGIN_BYTES:
            return error(413, "login body too large")
        try:
            token = (await request.json())["token"]
        except (ValueError, KeyError, TypeError):
            return error(400, 'expected JSON {"token": "..."}')
        if not isinstance(token, str) or not guard.credentials.is_operator(token):
            await asyncio.sleep(0.2)  # a slower guess; the tokens are long enough that guessing is hopeless anyway
            return error(401, "not an operator token")
        response = self.json({"logged_in": True})
        guard.session_cookie(response, token, secure=request.secure)
        return response


@app.page("/logout")
class Logout(View):
    async def post(self, request: Request) -> Response:
        response = self.json({"logged_in": False})
        response.del_cookie("wharf_session", path="/")
        return response


@app.page("/api/dashboard")
class DashboardData(View):
    async def get(self, request: Request) -> Response:
        queries = DashboardQueries(storage.ch)
        try:
            data = await asyncio.to_thread(queries.all, truth_file())
        except Exception as exc:  # the page shows the error instead of going blank; the details go to the log
            return failure(503, "dashboard queries failed", exc)
        return self.bytes(codec.dumps(data), content_type="application/json")


def alarm_state(alarm_id: str) -> tuple[str, str, str] | None:
    """(status, source_type, source_id) of an alarm as the alerts table has it; None if it was never stored.
    `alarm_id` must match ALARM_ID (no quotes can reach the SQL)."""
    ch = storage.ch
    rows = ch.query(f"SELECT argMax(status, ts), argMax(source_type, ts), argMax(source_id, ts) FROM {ch.table('alerts')} "
                    f"WHERE alarm_id = '{alarm_id}' GROUP BY alarm_id")
    return tuple(rows[0]) if rows else None  # type: ignore[return-value]


@app.page("/api/alarms/ack")
class AckAlarm(View):
    """Ack a device alarm that exists: unknown ids are refused here, so they never reach the device owners."""

    async def post(self, request: Request) -> Response:
        try:
            alarm_id = (await request.json())["alarm_id"]
        except (ValueError, KeyError, TypeError):
            return error(400, 'expected JSON {"alarm_id": "..."}')
        if not isinstance(alarm_id, str) or not ALARM_ID.match(alarm_id):
            return error(400, "alarm_id is not an alarm id (source/type/start_ms)")
        state = await asyncio.to_thread(alarm_state, alarm_id)
        if state is None:
            return error(404, "no such alarm")
        status, source_type, device = state
        if source_type != "device":
            return error(409, f"{source_type} alarms clear by themselves; only device alarms take an ack")
        if status not in ACKABLE:
            return self.json({"alarm_id": alarm_id, "status": status, "sent": None}, status=200)  # acks are idempotent
        command = {"command": "ack", "alarm_id": alarm_id, "ts": time.time(), "by": "dashboard"}
        fut = await topics["topic_sensor_commands"].send(key=device.encode(), value=codec.dumps(command))
        await fut
        return self.json({"sent": command}, status=202)
