"""The dashboard's query layer: one method per panel, the same SQL on ClickHouse 18.16 and current.

Times come back as epoch seconds (`toUnixTimestamp` / `toFloat64` in SQL) so both
backends return the same Python values. Panels read the aggregate tables the
materialized views keep (sensor_minute, clicks_minute, item_sentiment_hourly)
where one exists, and raw tables only over short recent ranges.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.sinks.clickhouse import ClickHouse


@dataclass
class DashboardQueries:
    ch: ClickHouse

    def _t(self, name: str) -> str:
        return self.ch.table(name)

    def events_per_minute(self, minutes: int = 30) -> dict[str, list[list[float]]]:
        """Rows landed per minute, per path (readings, clicks, reviews, dead letters)."""
        since = f"now() - INTERVAL {int(minutes)} MINUTE"
        sql = {
            "readings": f"SELECT toUnixTimestamp(toStartOfMinute(ts)) AS t, count() FROM {self._t('sensor_readings')} WHERE ts > {since} GROUP BY t ORDER BY t",
            "clicks": f"SELECT toUnixTimestamp(minute) AS t, countMerge(n) FROM {self._t('clicks_minute')} WHERE minute > {since} GROUP BY t ORDER BY t",
            "reviews": f"SELECT toUnixTimestamp(toStartOfMinute(ts)) AS t, count() FROM {self._t('reviews')} WHERE ts > {since} GROUP BY t ORDER BY t",
            "dead_letters": f"SELECT toUnixTimestamp(toStartOfMinute(received_ts)) AS t, count() FROM {self._t('dead_letters')} WHERE received_ts > {since} GROUP BY t ORDER BY t",
        }
        return {path: [[int(t), int(n)] for t, n in self.ch.query(q)] for path, q in sql.items()}

    def active_alarms(self, limit: int = 100) -> list[dict[str, Any]]:
        """Current state of every alarm that is not cleared (the latest event per alarm_id wins)."""
        rows = self.ch.query(
            f"SELECT alarm_id, argMax(alarm_type, ts), argMax(severity, ts), argMax(status, ts), argMax(source_type, ts), "
            f"argMax(source_id, ts), argMax(site, ts), argMax(zone, ts), toFloat64(min(start_ts)), toFloat64(max(ts)), argMax(message, ts) "
            f"FROM {self._t('alerts')} GROUP BY alarm_id HAVING argMax(status, ts) IN ('ACTIVE_UNACK', 'ACTIVE_ACK') "
            f"ORDER BY min(start_ts) DESC LIMIT {int(limit)}"
        )
        keys = ("alarm_id", "alarm_type", "severity", "status", "source_type", "source_id", "site", "zone", "since", "updated", "message")
        order = {"CRITICAL": 0, "MAJOR": 1, "MINOR": 2, "WARNING": 3}
        out = [dict(zip(keys, r, strict=True)) for r in rows]
        return sorted(out, key=lambda a: (order.get(a["severity"], 9), -a["since"]))

    def zone_metric(self, metric: str = "temperature", minutes: int = 60, device_type: str = "cold_room") -> dict[str, list[list[float]]]:
        """Per-zone average of one metric per minute, over the devices of one type (a zone mixes cold rooms and dock doors)."""
        safe, dtype = metric.replace("'", ""), device_type.replace("'", "")
        rows = self.ch.query(
            f"SELECT concat(site, '/', zone) AS z, toUnixTimestamp(minute) AS t, avgMerge(avg_value) FROM {self._t('sensor_minute')} "
            f"WHERE metric = '{safe}' AND minute > now() - INTERVAL {int(minutes)} MINUTE AND device_id IN "
            f"(SELECT DISTINCT device_id FROM {self._t('sensor_readings')} WHERE device_type = '{dtype}' AND ts > now() - INTERVAL {int(minutes)} MINUTE) "
            f"GROUP BY z, t ORDER BY z, t"
        )
        out: dict[str, list[list[float]]] = {}
        for zone, t, v in rows:
            out.setdefault(zone, []).append([int(t), round(float(v), 3)])
        return out

    def anomalies(self, minutes: int = 60, limit: int = 500) -> list[dict[str, Any]]:
        rows = self.ch.query(
            f"SELECT concat(site, '/', zone), device_id, metric, toFloat64(ts), value, score FROM {self._t('anomaly_scores')} "
            f"WHERE is_anomaly = 1 AND ts > now() - INTERVAL {int(minutes)} MINUTE ORDER BY ts DESC LIMIT {int(limit)}"
        )
        return [dict(zip(("zone", "device_id", "metric", "ts", "value", "score"), r, strict=True)) for r in rows]

    def alarms_per_device(self) -> dict[str, list[tuple[float, float | None]]]:
        """(start, clear time or None) of every device alarm, by device."""
        rows = self.ch.query(
            f"SELECT source_id, toFloat64(min(start_ts)), max(toFloat64(ifNull(end_ts, toDateTime(0)))) FROM {self._t('alerts')} "
            f"WHERE source_type = 'device' GROUP BY source_id, alarm_id"
        )
        out: dict[str, list[tuple[float, float | None]]] = {}
        for device, start, end in rows:
            out.setdefault(device, []).append((float(start), float(end) if end else None))
        return out

    def detection_delays(self, truth_file: Path | None) -> list[dict[str, Any]]:
        """For each injected fault (simulator ground truth): the first alarm on its device from its start
        on (detection delay), and when that alarm cleared."""
        if truth_file is None or not truth_file.exists():
            return []
        faults = [json.loads(line) for line in truth_file.read_text().splitlines() if line.strip()]
        alarms = self.alarms_per_device()
        out = []
        for f in faults[-50:]:
            hits = sorted((a for a in alarms.get(f["device_id"], []) if f["start_ts"] - 5 <= a[0] <= f["end_ts"] + 120),
                          key=lambda a: a[0])  # by start only: two alarms opened by one reading tie, and None (not cleared) has no order
            delay = hits[0][0] - f["start_ts"] if hits else None
            cleared = hits[0][1] if hits else None
            out.append({**f, "detected": delay is not None, "delay_s": None if delay is None else round(max(delay, 0.0), 1),
                        "cleared_ts": cleared})
        return out

    def top_recommended(self, minutes: int = 60, limit: int = 10) -> list[dict[str, Any]]:
        rows = self.ch.query(
            f"SELECT item_id, count() AS c, avg(score) FROM {self._t('recommendations')} WHERE ts > now() - INTERVAL {int(minutes)} MINUTE "
            f"GROUP BY item_id ORDER BY c DESC, item_id LIMIT {int(limit)}"
        )
        return [{"item_id": i, "times": int(c), "avg_score": round(float(s), 4)} for i, c, s in rows]

    def trending(self, minutes: int = 15, limit: int = 10) -> list[dict[str, Any]]:
        rows = self.ch.query(
            f"SELECT item_id, count() AS c, sum(action = 'purchase') FROM {self._t('clicks')} WHERE ts > now() - INTERVAL {int(minutes)} MINUTE "
            f"GROUP BY item_id ORDER BY c DESC, item_id LIMIT {int(limit)}"
        )
        return [{"item_id": i, "clicks": int(c), "purchases": int(p)} for i, c, p in rows]

    def sentiment(self, hours: int = 48, items: int = 6) -> dict[str, list[list[float]]]:
        """Hourly average sentiment of the most-reviewed items."""
        top = [r[0] for r in self.ch.query(
            f"SELECT item_id FROM {self._t('item_sentiment_hourly')} WHERE hour > now() - INTERVAL {int(hours)} HOUR "
            f"GROUP BY item_id ORDER BY countMerge(n) DESC, item_id LIMIT {int(items)}"
        )]
        if not top:
            return {}
        ids = ", ".join("'" + i.replace("'", "") + "'" for i in top)
        rows = self.ch.query(
            f"SELECT item_id, toUnixTimestamp(hour) AS t, avgMerge(avg_score), countMerge(n) FROM {self._t('item_sentiment_hourly')} "
            f"WHERE item_id IN ({ids}) AND hour > now() - INTERVAL {int(hours)} HOUR GROUP BY item_id, t ORDER BY item_id, t"
        )
        out: dict[str, list[list[float]]] = {}
        for item, t, avg, n in rows:
            out.setdefault(item, []).append([int(t), round(float(avg), 3), int(n)])
        return out

    def all(self, truth_file: Path | None = None) -> dict[str, Any]:
        return {
            "events_per_minute": self.events_per_minute(),
            "active_alarms": self.active_alarms(),
            "zone_temperature": self.zone_metric("temperature"),
            "anomalies": self.anomalies(),
            "detection_delays": self.detection_delays(truth_file),
            "top_recommended": self.top_recommended(),
            "trending": self.trending(),
            "sentiment": self.sentiment(),
        }
