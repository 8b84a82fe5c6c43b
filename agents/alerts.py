"""The alerts table: every alarm event stored once, also when a replay after a crash sends it again."""

from __future__ import annotations

import asyncio
import json

from schemas import rows
from schemas.events import Alert
from schemas.validation import processing_error
from streams.runtime.app import app, settings, topics
from streams.runtime.recent import RecentKeys
from agents.storage import store_topic

BATCH = settings.sink_batch_rows
WITHIN = min(settings.sink_batch_seconds, 0.05)  # latency: alarms should not wait for a full batch


class AlertRevisions:
    """(alarm_id, rev) already stored: a replay after a crash re-sends identical alarm events; store each once."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.seen: RecentKeys[tuple[str, int]] = RecentKeys(capacity)
        self.loaded = False

    async def load(self, ch) -> None:  # noqa: ANN001
        if self.loaded:
            return
        table = ch.table("alerts")
        rows_ = await asyncio.to_thread(ch.query, f"SELECT alarm_id, details FROM {table} ORDER BY ts DESC LIMIT {self.seen.capacity}")
        for alarm, details in reversed(rows_):
            try:
                self.seen.seen((alarm, int(json.loads(details).get("rev", 0))))
            except ValueError:
                continue
        self.loaded = True

    def is_copy(self, alert: Alert) -> bool:
        return self.seen.seen((alert.alarm_id, int(alert.details.get("rev", 0))))


@app.agent(topics["topic_alerts"], name="wharf.store-alerts")
async def store_alerts(stream):  # noqa: ANN001
    await store_topic(stream, "alerts", settings.topic_alerts, lambda event: Alert.model_validate_json(event.value), rows.alert,
                      lambda exc: processing_error("alert", "the alerts table", exc), seen=AlertRevisions(), batch=BATCH, within=WITHIN)
