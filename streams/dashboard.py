"""The operations dashboard, served by the worker that owns ClickHouse (chdb) or by any worker (server).

`GET /` is a static page (uPlot 1.6.32 from npm, vendored under streams/static,
MIT) that polls `GET /api/dashboard`, which runs every panel's query from
`streams.queries` in one call. The ack button posts to
`/api/alarms/ack` (JSON `{"alarm_id": ...}`), which hands an ack command to the device's owning
agent through the commands topic.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from faust.web import Request, Response, View

from schemas import codec
from streams.app import app, settings, storage, topics
from streams.queries import DashboardQueries

STATIC = Path(__file__).with_name("static")
app.web.add_static("/static/", STATIC)


def truth_file() -> Path:
    """Where `wharf simulate --truth` (and the demo) write the injected faults."""
    return settings.state_dir / "faults.jsonl"


@app.page("/")
class Dashboard(View):
    async def get(self, request: Request) -> Response:
        return self.html((STATIC / "dashboard.html").read_text())


@app.page("/api/dashboard")
class DashboardData(View):
    async def get(self, request: Request) -> Response:
        queries = DashboardQueries(storage.ch)
        try:
            data = await asyncio.to_thread(queries.all, truth_file())
        except Exception as exc:  # the page shows the error instead of going blank
            return self.json({"error": str(exc).splitlines()[0]}, status=503)
        return self.bytes(codec.dumps(data), content_type="application/json")


@app.page("/api/alarms/ack")
class AckAlarm(View):
    async def post(self, request: Request) -> Response:
        from online_models.alarms import source_of

        try:
            alarm_id = str((await request.json())["alarm_id"])
            device = source_of(alarm_id)
        except (ValueError, KeyError, TypeError) as exc:
            return self.json({"error": f"alarm_id: {exc}"}, status=400)
        command = {"command": "ack", "alarm_id": alarm_id, "ts": time.time(), "by": "dashboard"}
        fut = await topics["topic_sensor_commands"].send(key=device.encode(), value=codec.dumps(command))
        await fut
        return self.json({"sent": command}, status=202)
