"""The Grafana dashboard of the workers' and the bridge's own series (Prometheus), beside the ClickHouse one.

`python -m wharf.grafana_metrics` writes deploy/grafana/provisioning/dashboards/wharf-metrics.json;
tests/test_grafana.py keeps the file in step with this list, and tests/test_metrics.py checks that every
series a panel queries is one a real worker or bridge exposes (streams/web/metrics.py, mqtt_bridge/metrics.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from wharf.grafana import board, grid

OUT = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "provisioning" / "dashboards" / "wharf-metrics.json"
DATASOURCE = {"type": "prometheus", "uid": "wharf-prometheus"}


@dataclass(frozen=True)
class Panel:
    title: str
    exprs: tuple[tuple[str, str], ...]  # (PromQL, legend)
    unit: str = "short"
    width: int = 12
    height: int = 8


PANELS = (
    Panel("Records per second by path", (("sum by (path) (rate(wharf_records_processed_total[1m]))", "{{path}}"),), "ops"),
    Panel("Consumer lag by topic", (("sum by (topic) (wharf_consumer_lag)", "{{topic}}"),)),
    Panel("Validation refusals and dead letters per second", (
        ("sum by (source) (rate(wharf_validation_refusals_total[5m]))", "refused {{source}}"),
        ("sum by (source) (rate(wharf_dead_letters_total[5m]))", "dead letters {{source}}"))),
    Panel("ClickHouse writer: rows stored per second and rows pending", (
        ("sum by (table) (rate(wharf_writer_rows_stored_total[1m]))", "stored {{table}}"),
        ("sum by (table) (wharf_writer_rows_pending)", "pending {{table}}"))),
    Panel("ClickHouse insert time per second of wall time", (
        ("sum by (table) (rate(wharf_writer_insert_seconds_total[1m]))", "{{table}}"),), "percentunit"),
    Panel("Recommendation latency (p50, p99)", (
        ("histogram_quantile(0.5, sum by (le) (rate(wharf_recommendation_request_seconds_bucket[5m])))", "p50"),
        ("histogram_quantile(0.99, sum by (le) (rate(wharf_recommendation_request_seconds_bucket[5m])))", "p99")), "s"),
    Panel("Open alarms by state", (("sum by (state) (wharf_alarms)", "{{state}}"),)),
    Panel("Checkpoints per minute", (("sum by (path) (rate(wharf_checkpoints_total[5m])) * 60", "{{path}}"),)),
    Panel("Event-loop stalls per minute", (("sum by (instance) (rate(wharf_loop_stalls_total[5m])) * 60", "{{instance}}"),
                                           ("max by (instance) (wharf_loop_stall_max_seconds)", "longest {{instance}} (s)"))),
    Panel("MQTT bridge: messages per second and in flight", (
        ("rate(wharf_bridge_received_total[1m])", "received"), ("rate(wharf_bridge_forwarded_total[1m])", "forwarded"),
        ("rate(wharf_bridge_dead_lettered_total[1m])", "dead-lettered"), ("wharf_bridge_in_flight", "in flight"))),
)


def series(panels: tuple[Panel, ...] = PANELS) -> set[str]:
    """The metric names the panels query, as exposed (a histogram's `_bucket` included)."""
    return {m for p in panels for expr, _ in p.exprs for m in re.findall(r"\bwharf_[a-z_]+", expr)}


def dashboard() -> dict:
    return board("wharf-metrics", "Wharf — workers", [
        {"title": p.title, "type": "timeseries", "datasource": DATASOURCE, "gridPos": pos,
         "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
         "targets": [{"refId": chr(ord("A") + j), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
                     for j, (expr, legend) in enumerate(p.exprs)]}
        for p, pos in zip(PANELS, grid([(p.width, p.height) for p in PANELS]), strict=True)])


def write(path: Path = OUT) -> None:
    path.write_text(json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    write()
