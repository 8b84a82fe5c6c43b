"""The Grafana dashboard for docker-compose users: the same panels as Wharf's own page, as ClickHouse SQL.

`python -m wharf.grafana` writes deploy/grafana/provisioning/dashboards/wharf.json; a test keeps the
file, this list and docs/grafana.md's panel SQL in step. Grafana's ClickHouse plugin expands
`$__timeFilter(col)` to the dashboard's time range.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "provisioning" / "dashboards" / "wharf.json"


@dataclass(frozen=True)
class Panel:
    title: str
    kind: str  # timeseries | table | barchart
    sql: str
    width: int = 12
    height: int = 8


PANELS = (
    Panel("Events per minute by path", "timeseries",
          "SELECT toStartOfMinute(ts) AS time, 'readings' AS path, count() AS n FROM wharf.sensor_readings WHERE $__timeFilter(ts) GROUP BY time ORDER BY time\n"
          "UNION ALL SELECT minute AS time, 'clicks' AS path, countMerge(n) AS n FROM wharf.clicks_minute WHERE $__timeFilter(minute) GROUP BY time ORDER BY time\n"
          "UNION ALL SELECT toStartOfMinute(received_ts) AS time, 'dead letters' AS path, count() AS n FROM wharf.dead_letters WHERE $__timeFilter(received_ts) GROUP BY time ORDER BY time"),
    Panel("Active alarms", "table",
          "SELECT argMax(severity, ts) AS severity, argMax(alarm_type, ts) AS type, argMax(source_id, ts) AS source, "
          "argMax(zone, ts) AS zone, min(start_ts) AS since, argMax(status, ts) AS status, argMax(message, ts) AS message "
          "FROM wharf.alerts GROUP BY alarm_id HAVING status IN ('ACTIVE_UNACK', 'ACTIVE_ACK') ORDER BY since DESC", width=24),
    Panel("Cold-room temperature per zone (per-minute mean)", "timeseries",
          "SELECT minute AS time, concat(site, '/', zone) AS zone, avgMerge(avg_value) AS temperature FROM wharf.sensor_minute "
          "WHERE metric = 'temperature' AND $__timeFilter(minute) AND device_id IN "
          "(SELECT DISTINCT device_id FROM wharf.sensor_readings WHERE device_type = 'cold_room' AND $__timeFilter(ts)) "
          "GROUP BY time, zone ORDER BY time", width=24),
    Panel("Anomalies (score above the alert level)", "table",
          "SELECT ts, concat(site, '/', zone) AS zone, device_id, metric, value, score FROM wharf.anomaly_scores "
          "WHERE is_anomaly = 1 AND $__timeFilter(ts) ORDER BY ts DESC LIMIT 200"),
    Panel("Top recommended items (last hour)", "barchart",
          "SELECT item_id, count() AS users FROM wharf.recommendations WHERE ts > now() - INTERVAL 1 HOUR GROUP BY item_id ORDER BY users DESC LIMIT 10"),
    Panel("Trending items (last 15 minutes)", "barchart",
          "SELECT item_id, count() AS clicks FROM wharf.clicks WHERE ts > now() - INTERVAL 15 MINUTE GROUP BY item_id ORDER BY clicks DESC LIMIT 10"),
    Panel("Review sentiment per item (hourly mean)", "timeseries",
          "SELECT hour AS time, item_id, avgMerge(avg_score) AS sentiment FROM wharf.item_sentiment_hourly WHERE $__timeFilter(hour) "
          "AND item_id IN (SELECT item_id FROM wharf.item_sentiment_hourly GROUP BY item_id ORDER BY countMerge(n) DESC LIMIT 6) "
          "GROUP BY time, item_id ORDER BY time", width=24),
)


def grid(sizes: list[tuple[int, int]]) -> list[dict]:
    """Grafana `gridPos` of panels of these (width, height), left to right in rows of 24 columns."""
    out, x, y = [], 0, 0
    for w, h in sizes:
        if x + w > 24:
            x, y = 0, y + h
        out.append({"x": x, "y": y, "w": w, "h": h})
        x += w
    return out


def board(uid: str, title: str, panels: list[dict]) -> dict:
    """A provisioned dashboard: panels numbered in order, the last hour, refreshed every 10 s."""
    return {"uid": uid, "title": title, "schemaVersion": 39, "refresh": "10s", "time": {"from": "now-1h", "to": "now"},
            "timezone": "utc", "panels": [{"id": i, **p} for i, p in enumerate(panels, start=1)]}


def dashboard() -> dict:
    source = {"type": "grafana-clickhouse-datasource", "uid": "wharf-clickhouse"}
    return board("wharf-live", "Wharf — live operations", [
        {"title": p.title, "type": p.kind, "gridPos": pos, "datasource": source,
         "targets": [{"refId": "A", "datasource": source, "editorType": "sql", "format": 0 if p.kind == "timeseries" else 1,
                      "queryType": "sql", "rawSql": p.sql}]}
        for p, pos in zip(PANELS, grid([(p.width, p.height) for p in PANELS]), strict=True)])


def write(path: Path = OUT) -> None:
    path.write_text(json.dumps(dashboard(), indent=2) + "\n")


if __name__ == "__main__":
    write()
