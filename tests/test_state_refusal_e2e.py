"""A crafted pickle in each state changelog is refused with a logged error and runs nothing; the worker goes on.

Anyone who can write to Kafka (no authentication here) can put a record in a table's changelog topic, and a
worker restores it when it starts. Before the state format (schemas/state.py) these were pickles: one whose
`__reduce__` names `os.system` ran as the worker. Here one real worker starts on changelogs that hold such
pickles for the sensor-state table (a device), the recommender's and the review model's delta logs and an
item's sentiment norm; then a reading, a click and a review for exactly that state are sent, and must be stored
and scored as if there had been no state."""

from __future__ import annotations

import os
import pickle
import time
import zlib
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from schemas import codec
from streams.sinks.clickhouse import connect
from tests.test_commerce_e2e import env_for, http, shard_clicks
from tests.test_pipeline import wait_until
from tests.workers import WORKER_ARGV, WorkerProcess
from streams.runtime.kafka_auth import kafka_client

pytestmark = [pytest.mark.infra, pytest.mark.slow]


class Marker:
    """Unpickled, it creates a file (what `os.system` would do for any command)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _partition(key: str, partitions: int) -> int:
    from aiokafka.partitioner import murmur2

    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


async def test_crafted_pickles_in_every_state_changelog_are_refused_and_the_worker_goes_on(stack, server_url, unique, tmp_path):
    from wharf.infra.kafka import ensure_topics

    env = env_for(stack, server_url, unique, tmp_path) | {
        "WHARF_TOPIC_DEVICE_STATUS": f"test.status.{unique}", "WHARF_TOPIC_SENSOR_COMMANDS": f"test.commands.{unique}",
        "WHARF_TOPIC_ANOMALY_SCORES": f"test.scores.{unique}", "WHARF_SENSOR_MODEL_OPTIONS": '{"use_forecaster": false}',
        "WHARF_SENSOR_CHECKPOINT_SECONDS": "2"}
    app_id, n = env["WHARF_APP_ID"], stack.topic_partitions
    device, user, item = f"dev-{unique[:6]}", f"user-{unique[:6]}", f"item-{unique[:6]}"
    p_device, p_user, p_item = _partition(device, n), _partition(user, n), _partition(item, n)
    markers = {name: tmp_path / f"ran-{name}" for name in ("sensor", "recommender", "review-model", "norm")}
    crafted = {  # table -> (partition, key, value): each where the worker looks for that state
        "sensor-state": (p_device, device.encode(), zlib.compress(pickle.dumps((1, Marker(markers["sensor"]))), 1)),
        "commerce-recommender": (p_user, b"r/%d/000000/000000000/c" % p_user, pickle.dumps(([1], Marker(markers["recommender"])))),
        "commerce-sentiment-model": (p_item, b"s/%d/000000/000000000/c" % p_item, pickle.dumps(([1], Marker(markers["review-model"])))),
        "commerce-item-sentiment-norm": (p_item, item.encode(), pickle.dumps(Marker(markers["norm"]))),
    }
    await ensure_topics(stack, [v for k, v in env.items() if k.startswith("WHARF_TOPIC_")]
                        + [f"{app_id}-{table}-changelog" for table in crafted], n)
    producer = AIOKafkaProducer(**kafka_client(stack), acks="all")
    await producer.start()
    try:
        for table, (p, key, value) in crafted.items():
            await producer.send_and_wait(f"{app_id}-{table}-changelog", value, key=key, partition=p)
        # a v1 key (pickled per-user records, read by versions before the delta log)
        await producer.send_and_wait(f"{app_id}-commerce-recommender-changelog", pickle.dumps(Marker(markers["recommender"])),
                                     key=b"u/%d/%s" % (p_user, user.encode()), partition=p_user)
    finally:
        await producer.stop()

    port = stack.web_port + 31
    log = tmp_path / "worker.log"
    # at info level: once seen stalling under load with nothing logged after the refusals (7 Dec)
    worker = WorkerProcess(env, web_port=port, log=log, argv=[*WORKER_ARGV[:-1], "info"]).start()
    ch = connect(env["WHARF_CLICKHOUSE_URL"])
    count = lambda table, where: ch.query(f"SELECT count() FROM {ch.table(table)} WHERE {where}")[0][0]  # noqa: E731
    try:
        now = time.time()
        producer = AIOKafkaProducer(**kafka_client(stack), acks="all")
        await producer.start()
        try:
            for seq in range(5):
                await producer.send_and_wait(env["WHARF_TOPIC_SENSOR_READINGS"], codec.dumps(
                    {"site": "s1", "zone": "z1", "device_id": device, "device_type": "cold_room", "ts": now - 5 + seq, "seq": seq,
                     "metrics": {"temperature": 4.0 + 0.1 * seq}}), key=device.encode())
            await producer.send_and_wait(env["WHARF_TOPIC_CLICKS"], codec.dumps(
                {"event_id": f"e-{unique}", "user_id": user, "session_id": "s1", "item_id": item, "action": "view", "ts": now,
                 "category": "books", "price": 10.0}), key=user.encode())
            await producer.send_and_wait(env["WHARF_TOPIC_REVIEWS"], codec.dumps(
                {"review_id": f"r-{unique}", "user_id": user, "item_id": item, "seller_id": "shop-a", "rating": 5,
                 "text": "great book, loved it", "ts": now}), key=item.encode())
        finally:
            await producer.stop()

        def progress() -> dict[str, int]:
            return {"scores": count("anomaly_scores", f"device_id = '{device}'"), "readings": count("sensor_readings", f"device_id = '{device}'"),
                    "clicks": count("clicks", f"user_id = '{user}'"), "clicks learned": shard_clicks(port),
                    "reviews": count("reviews", f"item_id = '{item}'")}

        wanted = {"scores": 5, "readings": 5, "clicks": 1, "clicks learned": 1, "reviews": 1}
        try:
            await wait_until(lambda: all(v >= wanted[k] for k, v in progress().items()), 120,
                             "the reading, click and review stored and learned")
        except AssertionError as exc:  # once seen in CI beside a soak (7 Dec): say which one did not come, and why
            raise AssertionError(f"{exc}: {progress()} of {wanted}; the worker's log ends:\n{log.read_text()[-12000:]}") from None
        status, body = http("GET", f"http://127.0.0.1:{port}/sensors/devices")
        assert status == 200 and body["devices"][device]["learned"] == 5, body  # scored and learned from scratch
        status, body = http("GET", f"http://127.0.0.1:{port}/recommendations/{user}?k=3")
        assert status == 200 and body["items"] is not None, body
        assert worker.proc.poll() is None  # still running

        text = log.read_text()
        for table in crafted:
            assert f"{table}: " in text and "refused" in text.split(f"{table}: ", 1)[1].splitlines()[0], (table, text[-4000:])
        assert f"state of device '{device}' refused" in text and "pickle" in text
        assert f"state of item '{item}' refused" in text
        assert "state version 1 (pickled)" in text
        assert not [m.name for m in markers.values() if m.exists()]  # nothing ran
    finally:
        worker.stop()
        ch.command(f"DROP DATABASE IF EXISTS {ch.database}")
