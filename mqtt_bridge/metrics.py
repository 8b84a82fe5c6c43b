"""The bridge's counters for Prometheus, on a port of its own (`WHARF_BRIDGE_METRICS_PORT`; 0, the default: off).

The bridge is a process of its own with no web server, so prometheus_client's small HTTP server serves
`/metrics` from a thread. It has no credential: it binds `WHARF_BRIDGE_METRICS_HOST` (127.0.0.1 by
default), and docker-compose opens it on the containers' network only, where Prometheus runs.
The counters are read from `BridgeStats` at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mqtt_bridge.stats import BridgeStats
from schemas.settings import Settings


class BridgeCollector(Collector):
    def __init__(self, stats: BridgeStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        yield CounterMetricFamily("wharf_bridge_received", "MQTT messages the bridge received.", value=s.received)
        yield CounterMetricFamily("wharf_bridge_forwarded", "Messages Kafka confirmed on their topic.", value=s.forwarded)
        yield CounterMetricFamily("wharf_bridge_dead_lettered", "Messages refused (validation, routing) and confirmed as dead letters.",
                                  value=s.dead_lettered)
        yield CounterMetricFamily("wharf_bridge_kafka_retries", "Kafka sends retried.", value=s.kafka_retries)
        yield CounterMetricFamily("wharf_bridge_mqtt_connects", "MQTT (re)connections.", value=s.mqtt_connects)
        yield GaugeMetricFamily("wharf_bridge_in_flight", "Messages received and not yet acknowledged to the broker.", value=s.in_flight)


def serve(stats: BridgeStats, settings: Settings) -> Any:
    """Start the metrics server when a port is set; returns the server (its `shutdown()` stops it) or None."""
    if not settings.bridge_metrics_port:
        return None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BridgeCollector(stats))
    server, _thread = start_http_server(settings.bridge_metrics_port, addr=settings.bridge_metrics_host, registry=registry)
    return server
