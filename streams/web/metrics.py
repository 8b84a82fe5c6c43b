"""`GET /metrics`: the worker's counters in Prometheus' text format, read when Prometheus scrapes.

Pull, not push: a custom collector reads what the worker already keeps (the ClickHouse writers' stats,
the consumer's offsets, the loop watch, the counters of streams/runtime/counts.py) at scrape time, so the hot paths pay one
integer increment at most. Agents lend their own families (`streams.web.registry`, agents/metrics.py).

Who may scrape: an operator credential or a metrics token (`WHARF_WEB_METRICS_TOKENS`; streams/web/guard.py).
Prometheus sends it as `Authorization: Bearer <token>` (`authorization.credentials_file` in its config).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streams.runtime import counts, loopwatch
from streams.runtime.app import app, storage
from streams.web.registry import lent

ROUTE = "/metrics"
RECOMMENDATIONS_ROUTE = "/recommendations/{user_id}"

registry = CollectorRegistry(auto_describe=False)  # this worker's: never the process-global default one
recommendation_seconds = Histogram(
    "wharf_recommendation_request_seconds", "Time to answer GET /recommendations/{user_id} (authorised requests).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5), registry=registry)

def counter(name: str, doc: str, label: str, values: dict[str, float]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def gauge(name: str, doc: str, labels: list[str], values: dict[tuple[str, ...], float]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key), value)
    return family


class WorkerCollector(Collector):
    """Reads a worker's state at scrape time: consumer lag, writers, loop stalls and the counters above."""

    def __init__(self, app: Any, storage: Any, loopwatch: Any) -> None:
        self.app, self.storage, self.loopwatch = app, storage, loopwatch

    def collect(self) -> Iterator[Metric]:
        yield counter("wharf_records_processed", "Records an agent took from Kafka, per processing path.", "path", dict(counts.records))
        yield counter("wharf_validation_refusals", "Records refused by validation (each becomes a dead letter), per source topic (or mqtt, http).",
                      "source", dict(counts.refusals))
        yield counter("wharf_dead_letters", "Dead letters this worker sent to Kafka (refusals and processing errors), per source topic (or mqtt, http).", "source", dict(counts.dead_letters))
        yield gauge("wharf_consumer_lag", "Records in the partition after this worker's committed offset.", ["topic", "partition"],
                    self.lag())
        yield from self.writers()
        watch = self.loopwatch
        yield CounterMetricFamily("wharf_loop_stalls", "Event-loop stalls longer than the threshold (streams/runtime/loopwatch.py).",
                                  value=watch.stalls)
        yield CounterMetricFamily("wharf_loop_stall_seconds", "Time the event loop spent in stalls.", value=watch.total_ms / 1e3)
        yield GaugeMetricFamily("wharf_loop_stall_max_seconds", "Longest event-loop stall since the worker started.", value=watch.max_ms / 1e3)
        for source in lent.metric_families:
            yield from source()

    def lag(self) -> dict[tuple[str, ...], float]:
        """High-water mark minus committed offset per assigned partition (Faust commits the next offset to read;
        before the first commit of a partition its whole length counts)."""
        consumer = getattr(self.app, "_consumer", None)  # not created yet: no series
        if consumer is None:
            return {}
        out: dict[tuple[str, ...], float] = {}
        try:
            assigned = list(consumer.assignment())
        except Exception:  # noqa: BLE001 - the consumer is not started (or is rebalancing): nothing to report yet
            return {}
        committed = dict(consumer._committed_offset)  # noqa: SLF001 - Faust's own record of what it committed
        for tp in assigned:
            try:
                high = consumer.highwater(tp)
            except Exception:  # noqa: BLE001 - no fetch for this partition yet
                continue
            if high is None:
                continue
            out[(tp.topic, str(tp.partition))] = max(0, high - (committed.get(tp) or 0))
        return out

    def writers(self) -> Iterator[Metric]:
        ws = dict(self.storage.writers)
        stats = {name: w.stats for name, w in ws.items()}
        yield gauge("wharf_writer_rows_pending", "Rows queued for ClickHouse, per table.", ["table"],
                    {(n,): w.pending_rows for n, w in ws.items()})
        for name, field, doc in (("rows_stored", "rows_stored", "Rows stored in ClickHouse"),
                                 ("records_stored", "records_stored", "Kafka records whose rows are stored"),
                                 ("records_refused", "records_refused", "Records ClickHouse refused (dead-lettered)"),
                                 ("batches", "batches", "INSERT batches"),
                                 ("failures", "failures", "Failed INSERTs (retried)"),
                                 ("insert_seconds", "insert_seconds_total", "Time spent in INSERTs")):
            yield counter(f"wharf_writer_{name}", f"{doc}, per table.", "table", {n: getattr(s, field) for n, s in stats.items()})


registry.register(WorkerCollector(app, storage, loopwatch.watch))


@app.page(ROUTE)
class Metrics(View):
    """The worker's series; Prometheus' own text format, made by prometheus_client."""

    async def get(self, request: Request) -> Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


@web.middleware
async def _time_recommendations(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    """Inside the guard's middleware (installed after it): refused requests are not timed."""
    resource = request.match_info.route.resource
    if resource is None or resource.canonical != RECOMMENDATIONS_ROUTE:
        return await handler(request)
    started = time.perf_counter()
    try:
        return await handler(request)
    finally:
        recommendation_seconds.observe(time.perf_counter() - started)


app.web.web_app.middlewares.append(_time_recommendations)  # before the server starts, like the guard
