"""`GET /stats`: writer counters, row counts, GC pauses, loop stalls and batch agents of this worker."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from faust.web import Request, Response, View

from schemas.redact import redact
from streams.runtime import heap, loopwatch
from streams.runtime.app import app, storage

log = logging.getLogger(__name__)


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
