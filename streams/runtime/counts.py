"""Counters of events that happen in one place each: an increment there, read by `GET /metrics` at scrape time.

Plain `Counter`s with no project imports, so any floor's module (the ingest helpers below `streams.runtime.app`, the agents)
can count without pulling in the web server or prometheus_client (streams/web/metrics.py reads them).
"""

from __future__ import annotations

from collections import Counter

records: Counter[str] = Counter()  # path -> records an agent took (sensors, clicks, reviews, storage/<table>)
refusals: Counter[str] = Counter()  # source topic (or mqtt, http) -> records refused by validation
dead_letters: Counter[str] = Counter()  # source topic (or source: mqtt, http) -> dead letters sent to Kafka


def count_dead_letter(where: str, stage: str) -> None:
    """A dead letter sent, by its source topic (or source: mqtt, http); `stage` validation: also a refusal.
    Labelled by where, not by event type: a type is what a client sent, and labels must stay few."""
    dead_letters[where] += 1
    if stage == "validation":
        refusals[where] += 1
