"""ClickHouse DDL: tables, dashboard materialized views, and versioned migrations.

The SQL is written once with three placeholders rendered by server version:
`{TS}` (DateTime64(3, 'UTC') on current servers, DateTime('UTC') on 18.16, which
has no sub-second type), `{LC}` (LowCardinality(String), or String where it is
still experimental) and `{db}`. Every statement is idempotent (IF NOT EXISTS);
`wharf_migrations` records which versions were applied.

Exactly-once storage: every table fed from Kafka carries the source record's
`kafka_partition` and `kafka_offset`; the writer (streams/sinks/writer.py) skips records
at or below the stored high-water mark of their partition. That works on every
ClickHouse version, unlike `insert_deduplication_token` (22.2+).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

KAFKA_COLUMNS = "kafka_partition UInt16, kafka_offset UInt64"


@dataclass(frozen=True)
class TableSpec:
    """What the writer needs to know about a table: its columns and which are times (epoch seconds in rows)."""

    name: str
    columns: tuple[str, ...]
    time_columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]
    tables: tuple[TableSpec, ...] = field(default_factory=tuple)


def _cols(ddl_body: str) -> tuple[str, ...]:
    """Column names of a CREATE TABLE body (one `name Type` per line)."""
    out = []
    for line in ddl_body.strip().splitlines():
        line = line.strip().rstrip(",")
        if line:
            out.append(line.split()[0])
    return tuple(out)


def _table(name: str, body: str, engine: str, time_columns: tuple[str, ...]) -> tuple[str, TableSpec]:
    sql = f"CREATE TABLE IF NOT EXISTS {{db}}.{name} (\n{body.strip()},\n    {KAFKA_COLUMNS}\n) ENGINE = {engine}"
    return sql, TableSpec(name, _cols(body) + ("kafka_partition", "kafka_offset"), time_columns)


SENSOR_READINGS = _table(
    "sensor_readings",
    """
    ts {TS},
    site {LC},
    zone {LC},
    device_id String,
    device_type {LC},
    seq UInt64,
    metric_names Array({LC}),
    metric_values Array(Float64),
    ingest_ts {TS}
    """,
    "MergeTree() PARTITION BY toYYYYMM(ts) ORDER BY (site, zone, device_id, ts)",
    ("ts", "ingest_ts"),
)

ANOMALY_SCORES = _table(
    "anomaly_scores",
    """
    ts {TS},
    site {LC},
    zone {LC},
    device_id String,
    device_type {LC},
    seq UInt64,
    metric {LC},
    value Float64,
    score Float32,
    threshold Float32,
    is_anomaly UInt8,
    component_names Array({LC}),
    component_scores Array(Float32)
    """,
    "MergeTree() PARTITION BY toYYYYMM(ts) ORDER BY (site, zone, device_id, ts)",
    ("ts",),
)

ALERTS = _table(
    "alerts",
    """
    ts {TS},
    alarm_id String,
    alarm_type {LC},
    source_type {LC},
    source_id String,
    site String,
    zone String,
    severity {LC},
    status {LC},
    start_ts {TS},
    end_ts Nullable({TS}),
    ack_ts Nullable({TS}),
    message String,
    details String
    """,
    "MergeTree() PARTITION BY toYYYYMM(ts) ORDER BY (alarm_id, ts)",
    ("ts", "start_ts", "end_ts", "ack_ts"),
)

CLICKS = _table(
    "clicks",
    """
    ts {TS},
    event_id String,
    user_id String,
    session_id String,
    item_id String,
    action {LC},
    price Nullable(Float64),
    category String
    """,
    "MergeTree() PARTITION BY toYYYYMM(ts) ORDER BY (item_id, ts)",
    ("ts",),
)

REVIEWS = _table(
    "reviews",
    """
    ts {TS},
    review_id String,
    user_id String,
    item_id String,
    seller_id String,
    rating Nullable(UInt8),
    text String,
    score Float32,
    label {LC},
    model {LC}
    """,
    "MergeTree() PARTITION BY toYYYYMM(ts) ORDER BY (item_id, ts)",
    ("ts",),
)

RECOMMENDATIONS = _table(
    "recommendations",
    """
    ts {TS},
    user_id String,
    rank UInt16,
    item_id String,
    score Float32,
    reason {LC}
    """,
    "MergeTree() PARTITION BY toYYYYMM(ts) ORDER BY (user_id, ts, rank)",
    ("ts",),
)

DEAD_LETTERS = _table(
    "dead_letters",
    """
    received_ts {TS},
    kind {LC},
    source {LC},
    mqtt_topic String,
    src_topic String,
    src_partition Int32,
    src_offset Int64,
    field String,
    reason String,
    errors String,
    payload String,
    payload_size UInt32
    """,
    "MergeTree() PARTITION BY toYYYYMM(received_ts) ORDER BY (kind, received_ts)",
    ("received_ts",),
)

_BASE_TABLES = (SENSOR_READINGS, ANOMALY_SCORES, ALERTS, CLICKS, REVIEWS, RECOMMENDATIONS, DEAD_LETTERS)

# Dashboard aggregates: AggregatingMergeTree targets fed by materialized views,
# so dashboards read minutes/hours instead of raw rows. Query with -Merge combinators.
_VIEWS = (
    """CREATE TABLE IF NOT EXISTS {db}.sensor_minute (
    minute DateTime('UTC'),
    site {LC},
    zone {LC},
    device_id String,
    metric {LC},
    n AggregateFunction(count),
    avg_value AggregateFunction(avg, Float64),
    min_value AggregateFunction(min, Float64),
    max_value AggregateFunction(max, Float64)
) ENGINE = AggregatingMergeTree() PARTITION BY toYYYYMM(minute) ORDER BY (site, zone, metric, device_id, minute)""",
    """CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.sensor_minute_mv TO {db}.sensor_minute AS
SELECT toStartOfMinute(ts) AS minute, site, zone, device_id, metric,
       countState() AS n, avgState(value) AS avg_value, minState(value) AS min_value, maxState(value) AS max_value
FROM {db}.sensor_readings ARRAY JOIN metric_names AS metric, metric_values AS value
GROUP BY minute, site, zone, device_id, metric""",
    """CREATE TABLE IF NOT EXISTS {db}.item_sentiment_hourly (
    hour DateTime('UTC'),
    item_id String,
    n AggregateFunction(count),
    avg_score AggregateFunction(avg, Float32),
    positives AggregateFunction(sum, UInt64),
    negatives AggregateFunction(sum, UInt64)
) ENGINE = AggregatingMergeTree() PARTITION BY toYYYYMM(hour) ORDER BY (item_id, hour)""",
    """CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.item_sentiment_hourly_mv TO {db}.item_sentiment_hourly AS
SELECT toStartOfHour(ts) AS hour, item_id,
       countState() AS n, avgState(score) AS avg_score,
       sumState(toUInt64(label = 'positive')) AS positives, sumState(toUInt64(label = 'negative')) AS negatives
FROM {db}.reviews GROUP BY hour, item_id""",
    """CREATE TABLE IF NOT EXISTS {db}.clicks_minute (
    minute DateTime('UTC'),
    action {LC},
    n AggregateFunction(count),
    users AggregateFunction(uniq, String),
    revenue AggregateFunction(sum, Float64)
) ENGINE = AggregatingMergeTree() PARTITION BY toYYYYMM(minute) ORDER BY (action, minute)""",
    """CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.clicks_minute_mv TO {db}.clicks_minute AS
SELECT toStartOfMinute(ts) AS minute, action,
       countState() AS n, uniqState(user_id) AS users,
       sumState(if(action = 'purchase', ifNull(price, 0), 0)) AS revenue
FROM {db}.clicks GROUP BY minute, action""",
)

MIGRATIONS: list[Migration] = [
    Migration(
        1,
        "base tables and dashboard views",
        tuple(sql for sql, _ in _BASE_TABLES) + _VIEWS,
        tuple(spec for _, spec in _BASE_TABLES),
    ),
]

# Commerce path (migration 2): per-item "also viewed" snapshots for dashboards, fed only by the
# also-viewed topic (one table <- one topic). `shard` is the clicks partition whose recommender
# state produced the list (the recommender keeps item state per user partition, see agents/recommender.py).
ITEM_ALSO_VIEWED = _table(
    "item_also_viewed",
    """
    ts {TS},
    item_id String,
    shard UInt16,
    rank UInt16,
    other_item_id String,
    score Float32
    """,
    "MergeTree() PARTITION BY toYYYYMM(ts) ORDER BY (item_id, ts, shard, rank)",
    ("ts",),
)

MIGRATIONS.append(Migration(2, "commerce: item_also_viewed snapshots", (ITEM_ALSO_VIEWED[0],), (ITEM_ALSO_VIEWED[1],)))

# Bounded dead letters (migration 3): a dead letter keeps a prefix of the refused bytes, with the SHA-256 of the
# whole payload and whether it was cut, and the step that refused it (several agents dead-letter records of one
# source partition, each in offset order: copies are told apart per stage). ADD COLUMN has no IF NOT EXISTS on 18.16: `migrate` tolerates a column
# another worker added first.
_DEAD_LETTERS_V3 = TableSpec(DEAD_LETTERS[1].name, DEAD_LETTERS[1].columns + ("payload_sha256", "payload_truncated", "stage"),
                             DEAD_LETTERS[1].time_columns)
MIGRATIONS.append(Migration(3, "dead letters: payload hash and truncation", (
    "ALTER TABLE {db}.dead_letters ADD COLUMN payload_sha256 String",
    "ALTER TABLE {db}.dead_letters ADD COLUMN payload_truncated UInt8",
    "ALTER TABLE {db}.dead_letters ADD COLUMN stage String DEFAULT 'validation'",
), (_DEAD_LETTERS_V3,)))

TABLES: dict[str, TableSpec] = {spec.name: spec for m in MIGRATIONS for spec in m.tables}

MIGRATIONS_TABLE = """CREATE TABLE IF NOT EXISTS {db}.wharf_migrations (
    version UInt32,
    name String,
    applied_at DateTime('UTC')
) ENGINE = MergeTree() ORDER BY version"""


def render(sql: str, *, database: str, modern: bool) -> str:
    return sql.format(
        db=database,
        TS="DateTime64(3, 'UTC')" if modern else "DateTime('UTC')",
        LC="LowCardinality(String)" if modern else "String",
    )


def migrate(ch: Any, migrations: list[Migration] | None = None) -> list[int]:
    """Apply pending migrations in order; returns the versions applied. Safe to run concurrently (all DDL is idempotent)."""
    migrations = migrations if migrations is not None else MIGRATIONS
    ch.command(render(MIGRATIONS_TABLE, database=ch.database, modern=ch.modern))
    rows = ch.query(f"SELECT max(version) FROM {ch.database}.wharf_migrations")
    current = int(rows[0][0] or 0) if rows else 0
    applied = []
    for m in sorted(migrations, key=lambda m: m.version):
        if m.version <= current:
            continue
        for sql in m.statements:
            try:
                ch.command(render(sql, database=ch.database, modern=ch.modern))
            except Exception as exc:
                if not (" ADD COLUMN " in sql and "already exists" in str(exc)):  # a concurrent migrate added it
                    raise
        ch.command(
            f"INSERT INTO {ch.database}.wharf_migrations (version, name, applied_at) SELECT {m.version}, '{m.name.replace(chr(39), '')}', now()"
        )
        applied.append(m.version)
    return applied
