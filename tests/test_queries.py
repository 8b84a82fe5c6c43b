"""The dashboard's query layer on both backends (chdb, and the 18.16 server), on rows it can check."""

import json
import time

import pytest

from schemas.clickhouse import TABLES
from streams.sinks.queries import DashboardQueries




def insert(ch, table, rows):
    spec = TABLES[table]
    full = [{"kafka_partition": 0, "kafka_offset": i} | r for i, r in enumerate(rows)]
    ch.insert(table, spec.columns, full, spec.time_columns)


def test_every_panel_on_real_rows(ch, tmp_path):
    now = time.time()
    minute = now - now % 60
    insert(ch, "sensor_readings", [
        {"ts": minute + i, "site": "s1", "zone": f"z{i % 2}", "device_id": f"d{i % 2}", "device_type": "cold_room", "seq": i,
         "metric_names": ["temperature"], "metric_values": [4.0 + (i % 2)], "ingest_ts": now} for i in range(20)
    ])
    insert(ch, "clicks", [
        {"ts": now - i, "event_id": f"e{i}", "user_id": "u", "session_id": "s", "item_id": "hot" if i < 6 else "cold",
         "action": "purchase" if i == 0 else "view", "price": 3.0, "category": ""} for i in range(8)
    ])
    base = {"alarm_type": "temperature_high", "source_type": "device", "source_id": "d1", "site": "s1", "zone": "z1",
            "end_ts": None, "ack_ts": None, "message": "too warm", "details": "{}"}
    insert(ch, "alerts", [
        base | {"ts": now - 50, "alarm_id": "a1", "severity": "MAJOR", "status": "ACTIVE_UNACK", "start_ts": now - 50},
        base | {"ts": now - 20, "alarm_id": "a1", "severity": "CRITICAL", "status": "ACTIVE_ACK", "start_ts": now - 50},
        base | {"ts": now - 40, "alarm_id": "a2", "severity": "MINOR", "status": "ACTIVE_UNACK", "start_ts": now - 40},
        base | {"ts": now - 10, "alarm_id": "a2", "severity": "MINOR", "status": "CLEARED_UNACK", "start_ts": now - 40},
    ])
    insert(ch, "anomaly_scores", [
        {"ts": now - 5, "site": "s1", "zone": "z1", "device_id": "d1", "device_type": "cold_room", "seq": 3, "metric": "temperature",
         "value": 9.5, "score": 0.9, "threshold": 0.4, "is_anomaly": 1, "component_names": ["level"], "component_scores": [5.0]},
        {"ts": now - 4, "site": "s1", "zone": "z1", "device_id": "d1", "device_type": "cold_room", "seq": 4, "metric": "temperature",
         "value": 4.1, "score": 0.1, "threshold": 0.4, "is_anomaly": 0, "component_names": ["level"], "component_scores": [0.2]},
    ])
    insert(ch, "recommendations", [
        {"ts": now, "user_id": f"u{i}", "rank": 1, "item_id": "hot", "score": 0.5, "reason": "popular"} for i in range(3)
    ])
    insert(ch, "reviews", [
        {"ts": now - i, "review_id": f"r{i}", "user_id": "u", "item_id": "hot", "seller_id": "", "rating": 5, "text": "great",
         "score": 0.8 if i else -0.2, "label": "positive", "model": "hashing"} for i in range(4)
    ])
    truth = tmp_path / "truth.jsonl"
    truth.write_text("\n".join(json.dumps(f) for f in [
        {"kind": "door_left_open", "device_id": "d1", "start_ts": now - 60, "end_ts": now, "metric": "temperature", "magnitude": 6},
        {"kind": "stuck", "device_id": "d9", "start_ts": now - 60, "end_ts": now, "metric": "temperature", "magnitude": 0},
    ]))

    q = DashboardQueries(ch)
    panels = q.all(truth)
    assert sum(n for _, n in panels["events_per_minute"]["readings"]) == 20
    assert sum(n for _, n in panels["events_per_minute"]["clicks"]) == 8
    assert sum(n for _, n in panels["events_per_minute"]["reviews"]) == 4
    alarms = panels["active_alarms"]
    assert [a["alarm_id"] for a in alarms] == ["a1"]  # a2 was cleared
    assert alarms[0]["severity"] == "CRITICAL" and alarms[0]["status"] == "ACTIVE_ACK"
    assert alarms[0]["since"] == pytest.approx(now - 50, abs=1.0)
    zones = panels["zone_temperature"]
    assert set(zones) == {"s1/z0", "s1/z1"} and zones["s1/z1"][0][1] == 5.0
    assert [a["device_id"] for a in panels["anomalies"]] == ["d1"]
    delays = {d["device_id"]: d for d in panels["detection_delays"]}
    assert delays["d1"]["detected"] and delays["d1"]["delay_s"] == pytest.approx(10, abs=1.0)
    assert delays["d1"]["cleared_ts"] is None  # a1 is still active
    assert not delays["d9"]["detected"]
    assert panels["top_recommended"][0] == {"item_id": "hot", "times": 3, "avg_score": 0.5}
    assert panels["trending"][0] == {"item_id": "hot", "clicks": 6, "purchases": 1}
    (item, series), = panels["sentiment"].items()
    assert item == "hot" and series[0][2] == 4 and series[0][1] == pytest.approx(0.55, abs=0.01)
