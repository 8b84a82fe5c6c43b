"""HTTP endpoints of the Faust worker's web server, every one behind `streams.guard` (who may call what)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from faust.web import Request, Response, View

from streams import guard as _guard
from streams import heap, loopwatch
from streams.app import app, settings, storage

log = logging.getLogger(__name__)
guard = _guard.install(app, settings)  # before any route answers: the server starts after these imports


@app.page("/stats")
class Stats(View):
    """Writer counters and row counts per table: a health view for operators and the demo."""

    async def get(self, request: Request) -> Response:
        writers = {name: {k: redact(v) if k == "last_error" and v else v for k, v in dataclasses.asdict(w.stats).items()}
                   | {"pending_rows": w.pending_rows} for name, w in storage.writers.items()}
        tables: dict[str, Any] = {}
        try:
            ch = storage.ch
            for table in ("sensor_readings", "clicks", "dead_letters", "anomaly_scores", "alerts", "reviews", "recommendations"):
                rows = await asyncio.to_thread(ch.query, f"SELECT count() FROM {ch.table(table)}")
                tables[table] = int(rows[0][0])
        except Exception:  # a health view reports, it does not fail; the details (a server URL?) stay in the log
            log.exception("/stats: row counts failed")
            tables["error"] = "row counts unavailable (see the worker's log)"
        dispatch = getattr(app.consumer, "dispatch_stats", None)
        return self.json({"url": str(app.conf.canonical_url),  # where the other workers forward requests for this one
                          "writers": writers, "tables": tables, "gc": heap.pauses.as_dict(), "loop": loopwatch.watch.as_dict(),
                          "dispatch": {**(dataclasses.asdict(dispatch) if dispatch is not None else {}),
                                       "batch_handed_over": app.batch_agents.handed_over},
                          "batch_agents": app.batch_agents.stats()})


from streams import dashboard  # noqa: E402,F401 - registers the dashboard views

import streams.collector  # noqa: E402,F401 - POST /collect, POST /catalogue (commerce path)
import streams.serving  # noqa: E402,F401 - GET /recommendations/{user_id} (commerce path)
import streams.metrics  # noqa: E402,F401 - GET /metrics (Prometheus), after the guard: see streams/metrics.py
