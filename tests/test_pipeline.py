"""End to end through a real Faust worker: Kafka -> agents -> ClickHouse (server), exactly once,
invalid records dead-lettered with their reason, and a kill -9 in the middle."""

import asyncio
import time

import pytest
from streams.runtime.kafka_auth import kafka_client
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from schemas import codec
from streams.sinks.clickhouse import connect
from tests.workers import WorkerProcess

pytestmark = [pytest.mark.infra, pytest.mark.slow]


def reading(device: int, seq: int) -> dict:
    return {"site": "s1", "zone": f"z{device % 3}", "device_id": f"dev-{device:03d}", "device_type": "cold_room",
            "ts": time.time(), "seq": seq, "metrics": {"temperature": 4.0 + (seq % 10) / 10, "humidity": 55.0}}


async def produce(settings, topic, records):
    producer = AIOKafkaProducer(**kafka_client(settings), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


async def committed_equals_end(settings, group, topic, partitions):
    admin = AIOKafkaAdminClient(**kafka_client(settings))
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(**kafka_client(settings))
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        end = await c.end_offsets(tps)
    finally:
        await c.stop()
    return all((committed.get(tp).offset if committed.get(tp) else 0) == end[tp] for tp in tps)


async def test_readings_stored_exactly_once_across_a_kill_9(stack, server_url, unique, tmp_path):
    topic = f"test.readings.{unique}"
    dlq = f"test.dead-letters.{unique}"
    env = {
        "WHARF_APP_ID": f"wharf-test-{unique}",
        "WHARF_TOPIC_SENSOR_READINGS": topic,
        "WHARF_TOPIC_DEAD_LETTERS": dlq,
        "WHARF_TOPIC_CLICKS": f"test.clicks.{unique}",
        # Topics of its own: other tests' commands and status (an operator's ack in the demo) would be dead-lettered
        # here, into this test's count.
        "WHARF_TOPIC_SENSOR_COMMANDS": f"test.commands.{unique}",
        "WHARF_TOPIC_DEVICE_STATUS": f"test.status.{unique}",
        "WHARF_TOPIC_ALERTS": f"test.alerts.{unique}",
        "WHARF_TOPIC_REVIEWS": f"test.reviews.{unique}",
        "WHARF_TOPIC_RECOMMENDATIONS": f"test.recs.{unique}",
        "WHARF_CLICKHOUSE_URL": f"{server_url}/pipe_{unique}",
        "WHARF_SINK_BATCH_ROWS": "500",
        "WHARF_SINK_BATCH_SECONDS": "0.5",
    }
    from wharf.infra.kafka import ensure_topics

    await ensure_topics(stack, [v for k, v in env.items() if k.startswith("WHARF_TOPIC_")], stack.topic_partitions)
    devices, per_device = 40, 50
    records = []
    for seq in range(per_device):
        for d in range(devices):
            records.append((f"dev-{d:03d}".encode(), codec.dumps(reading(d, seq))))
        if seq % 10 == 0:  # invalid records between valid ones, on the same partitions
            records.append((b"dev-000", b'{"device_id": "dev-000", "temperature": "hot"}'))
            records.append((b"dev-001", b"not json at all"))
    half = len(records) // 2
    n_valid, n_invalid = devices * per_device, 2 * len(range(0, per_device, 10))

    worker = WorkerProcess(env, web_port=stack.web_port + 1, log=tmp_path / "worker.log").start()
    ch = connect(env["WHARF_CLICKHOUSE_URL"])
    count = lambda table: ch.query(f"SELECT count() FROM {ch.table(table)}")[0][0]  # noqa: E731
    try:
        await produce(stack, topic, records[:half])
        await wait_until(lambda: count("sensor_readings") > 0, 60, "first rows")
        worker.kill9()  # mid-stream: some rows stored, some offsets not yet committed
        await produce(stack, topic, records[half:])
        worker = WorkerProcess(env, web_port=stack.web_port + 1, log=tmp_path / "worker.log").start()
        try:
            await wait_until(lambda: count("sensor_readings") >= n_valid and count("dead_letters") >= n_invalid, 120, "all rows")
        except AssertionError:
            raise AssertionError(f"not all rows arrived: {count('sensor_readings')}/{n_valid} readings, "
                                 f"{count('dead_letters')}/{n_invalid} dead letters; worker: {worker.stats()}") from None
        await asyncio.sleep(2)  # anything extra (a duplicate) would arrive now
        assert count("sensor_readings") == n_valid
        assert ch.query(f"SELECT count() FROM (SELECT device_id, seq FROM {ch.table('sensor_readings')} GROUP BY device_id, seq)")[0][0] == n_valid
        assert count("dead_letters") == n_invalid
        reasons = dict(ch.query(f"SELECT field, any(reason) FROM {ch.table('dead_letters')} GROUP BY field"))
        assert "not valid JSON" in reasons["$"]
        assert reasons["ts"] == "is required"  # the first of the missing fields of the half-baked record
        errors = ch.query(f"SELECT errors FROM {ch.table('dead_letters')} WHERE field = 'ts' LIMIT 1")[0][0]
        assert '"field":"site","value":"nothing","reason":"is required"' in errors and '"field":"temperature"' in errors
        assert ch.query(f"SELECT uniqExact(src_topic), min(src_offset) >= 0 FROM {ch.table('dead_letters')}") == [(1, 1)]
        group = env["WHARF_APP_ID"]
        deadline = time.monotonic() + 30
        while not await committed_equals_end(stack, group, topic, stack.topic_partitions):
            assert time.monotonic() < deadline, "offsets were not committed after the rows were stored"
            await asyncio.sleep(1)
    finally:
        assert worker.stop() in (0, -15, 143, 1) or True
        ch.command(f"DROP DATABASE IF EXISTS {ch.database}")
