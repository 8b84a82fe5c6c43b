"""Both ClickHouse backends: embedded chdb (current SQL) and the 18.16 server via clickhouse-driver."""

import time

import pytest

from schemas.clickhouse import MIGRATIONS, TABLES, migrate, render
from streams.sinks.clickhouse import ClickHouseError, connect


@pytest.fixture(params=["chdb", "server"])
def ch(request, chdb_path, unique):
    if request.param == "chdb":
        c = connect(f"chdb://{chdb_path}?database=test_{unique}")
        yield c
        c.command(f"DROP DATABASE IF EXISTS {c.database}")
    else:
        url = request.getfixturevalue("server_url")
        c = connect(f"{url}/test_{unique}")
        yield c
        c.command(f"DROP DATABASE IF EXISTS {c.database}")
        c.close()


def test_backends_report_their_versions(ch):
    if ch.url.startswith("chdb"):
        assert ch.version >= (24,) and ch.modern
    else:
        assert ch.version[:2] == (18, 16) and not ch.modern


def test_ddl_is_rendered_by_server_version():
    sql = MIGRATIONS[0].statements[0]
    new, old = render(sql, database="d", modern=True), render(sql, database="d", modern=False)
    assert "DateTime64(3, 'UTC')" in new and "LowCardinality(String)" in new
    assert "DateTime64" not in old and "LowCardinality" not in old and "DateTime('UTC')" in old


def test_migrations_apply_once_and_are_idempotent(ch):
    assert migrate(ch) == [m.version for m in MIGRATIONS]
    assert migrate(ch) == []
    versions = ch.query(f"SELECT version FROM {ch.database}.wharf_migrations ORDER BY version")
    assert [v for (v,) in versions] == [m.version for m in MIGRATIONS]
    tables = {name for (name,) in ch.query(f"SELECT name FROM system.tables WHERE database = '{ch.database}'")}
    assert set(TABLES) <= tables
    assert {"sensor_minute", "sensor_minute_mv", "item_sentiment_hourly", "clicks_minute"} <= tables


def test_insert_select_and_dashboard_views(ch):
    migrate(ch)
    spec = TABLES["sensor_readings"]
    t0 = float(int(time.time() // 60 * 60))
    rows = [
        {"ts": t0 + i, "site": "s1", "zone": "z1", "device_id": f"d{i % 2}", "device_type": "cold_room", "seq": i,
         "metric_names": ["temperature", "humidity"], "metric_values": [4.0 + i, 50.0], "ingest_ts": t0 + i,
         "kafka_partition": 0, "kafka_offset": i}
        for i in range(10)
    ]
    ch.insert(spec.name, spec.columns, rows, spec.time_columns)
    assert ch.query(f"SELECT count(), sum(seq), toUInt32(min(ts)) FROM {ch.table('sensor_readings')}") == [(10, 45, int(t0))]
    agg = ch.query(
        f"SELECT metric, countMerge(n), avgMerge(avg_value), maxMerge(max_value) FROM {ch.table('sensor_minute')} "
        f"GROUP BY metric ORDER BY metric"
    )
    assert agg == [("humidity", 10, 50.0, 50.0), ("temperature", 10, 8.5, 13.0)]
    clicks = TABLES["clicks"]
    ch.insert(clicks.name, clicks.columns, [
        {"ts": t0, "event_id": "e1", "user_id": "u1", "session_id": "s", "item_id": "i1", "action": "purchase", "price": 20.0, "category": "c", "kafka_partition": 0, "kafka_offset": 0},
        {"ts": t0, "event_id": "e2", "user_id": "u2", "session_id": "s", "item_id": "i1", "action": "view", "price": None, "category": "c", "kafka_partition": 0, "kafka_offset": 1},
    ], clicks.time_columns)
    per_action = ch.query(f"SELECT action, countMerge(n), uniqMerge(users), sumMerge(revenue) FROM {ch.table('clicks_minute')} GROUP BY action ORDER BY action")
    assert per_action == [("purchase", 1, 1, 20.0), ("view", 1, 1, 0.0)]


def test_errors_are_reported_with_the_statement(ch):
    with pytest.raises(ClickHouseError) as info:
        ch.query(f"SELECT no_such_column FROM {ch.database}.wharf_missing_table")
    assert "wharf_missing_table" in str(info.value)
    assert not info.value.retryable


def test_unreachable_server_is_retryable(unique):
    with pytest.raises(ClickHouseError) as info:
        connect("clickhouse://default:@127.0.0.1:1/x")
    assert info.value.retryable


def test_an_insert_leaves_no_reference_cycles(ch):
    """The worker leaves cycles to the collector's half-hourly sweep (`streams/runtime/heap.py`): an INSERT on either
    backend must free what it built by reference counting alone (clickhouse-driver's columns point back at
    themselves through their serialization: `streams.sinks.clickhouse._columns_without_cycles`)."""
    import gc

    migrate(ch)
    spec = TABLES["sensor_readings"]
    t0 = float(int(time.time()))
    rows = [{"ts": t0 + i, "site": "s1", "zone": "z1", "device_id": "d1", "device_type": "cold_room", "seq": i,
             "metric_names": ["temperature"], "metric_values": [4.0 + i], "ingest_ts": t0 + i,
             "kafka_partition": 0, "kafka_offset": i} for i in range(20)]
    ch.insert(spec.name, spec.columns, rows, spec.time_columns)  # the first one may build what stays (caches)
    gc.collect()
    gc.disable()
    try:
        for k in range(10):
            ch.insert(spec.name, spec.columns, [r | {"kafka_offset": 100 * (k + 1) + r["seq"]} for r in rows], spec.time_columns)
        unreachable = gc.collect()
    finally:
        gc.enable()
    assert unreachable == 0
    assert ch.query(f"SELECT count() FROM {ch.table('sensor_readings')}") == [(220,)]
