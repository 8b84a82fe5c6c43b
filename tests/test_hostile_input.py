"""Hostile input on the real servers: no message stops a path, every input is accounted for.

One worker and one bridge take, through MQTT and straight through Kafka, the payloads that stopped Wharf before
(a reading nested 1,000 levels deep, seq = 2^64, a 0.9 MiB payload, an ISO-8601 review time read from Kafka,
garbage on the topics Wharf writes itself) and a batch of payloads drawn by Hypothesis. Afterwards normal readings
from another device are stored and scored, and every hostile input is in ClickHouse exactly once: as a row or as
a dead letter naming the field and the reason.
"""

from __future__ import annotations

import asyncio
import json
import time
import warnings

import pytest
from streams.runtime.kafka_auth import kafka_client
from aiokafka import AIOKafkaProducer
from hypothesis import strategies as st
from hypothesis.errors import NonInteractiveExampleWarning

from schemas import codec
from schemas.events import SensorReading
from schemas.validation import InvalidEvent, parse
from tests.test_sensors_e2e import SITE, Device, Stack, add_devices, make_topics, sensor_env, wait_until
from tests.workers import WorkerProcess

pytestmark = [pytest.mark.infra, pytest.mark.slow]


def _locally_invalid(payload: bytes) -> bool:
    """Invalid without even looking at the time (the bridge also checks the time, so it refuses these too)."""
    try:
        parse(payload, SensorReading)
    except InvalidEvent:
        return True
    return False


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                     max_leaves=30)
HOSTILE = st.one_of(
    st.binary(min_size=1, max_size=3000),
    _json.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"site": st.just(SITE), "zone": st.just("z1"), "device_type": st.just("cold_room"),
                           "ts": st.one_of(st.floats(allow_nan=False), st.integers(), st.text(max_size=30)),
                           "seq": st.one_of(st.integers(min_value=2**63), st.integers(max_value=-1), st.text(max_size=5)),
                           "metrics": st.dictionaries(st.text(max_size=40), st.one_of(st.floats(allow_nan=False), st.integers(),
                                                                                        st.text(max_size=5)), max_size=40)})
    .map(lambda v: json.dumps(v).encode()),
).filter(_locally_invalid)


def test_hostile_input_never_stops_a_path_and_is_accounted_for(stack, server_url, tmp_path, unique):
    """One run on the real servers with 40 payloads drawn at random from `HOSTILE` (the same strategy is explored
    300 times per model at the unit level, tests/test_schemas.py; here each run costs a worker start, so the draw
    is random rather than shrunk: a failure's dead letters and logs hold the payloads)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonInteractiveExampleWarning)
        drawn = [HOSTILE.example() for _ in range(40)]
    asyncio.run(_run(stack, server_url, tmp_path, unique, drawn))


async def _run(stack, server_url, tmp_path, unique: str, drawn: list[bytes]) -> None:
    env = sensor_env(stack, server_url, unique)
    await make_topics(stack, env)
    attacker_id, honest_id = f"h{unique[:6]}-bad", f"h{unique[:6]}-ok"
    add_devices(stack, [attacker_id, honest_id])
    st_ = Stack(stack, env, tmp_path, unique)
    worker = WorkerProcess(env, web_port=stack.web_port + 40, log=tmp_path / "worker.log")  # a port of its own
    st_.workers.append(worker)
    devices: list[Device] = []
    producer = AIOKafkaProducer(**kafka_client(stack), acks="all", max_request_size=4 * 1024 * 1024)
    try:
        worker.start()
        st_.bridge.start()
        devices += [Device(stack, attacker_id), Device(stack, honest_id)]
        attacker, honest = devices
        await producer.start()
        now = time.time()
        good = json.loads(attacker.payload(0, now, temperature=4.0))
        # --- through MQTT, from the attacker's own credential -------------------------------------------------
        mqtt_hostile = [
            b'{"a":' * 1000 + b"1" + b"}" * 1000,  # the bridge died of RecursionError, on every restart
            json.dumps(good | {"seq": 2**64}).encode(),  # passed, then stopped both sensor writers
            json.dumps(good | {"metrics": {"temperature": 1e200}}).encode(),
            json.dumps(good | {"seq": 1, "metrics": {"temperature": 4.0, "pad": 1.0}}).encode() + b" " * (900 * 1024),  # 0.9 MiB
            b"{not json",
            *drawn,
        ]
        for payload in mqtt_hostile:
            attacker.publish(payload)
        attacker.flush()
        # --- straight into Kafka (it has no authentication yet) ------------------------------------------------
        iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        review = {"review_id": f"r{unique}", "user_id": "u1", "item_id": "i1", "rating": 5, "text": "great", "ts": iso}
        kafka_hostile_letters = [  # (topic, key, value): each makes one dead letter
            (env["WHARF_TOPIC_SENSOR_READINGS"], attacker_id, json.dumps(good | {"seq": 2**64}).encode()),
            (env["WHARF_TOPIC_DEVICE_STATUS"], attacker_id, b'{"state": "sideways"}'),
            (env["WHARF_TOPIC_SENSOR_COMMANDS"], attacker_id, b"\xff\xfe not json"),
            (env["WHARF_TOPIC_SENSOR_COMMANDS"], attacker_id, b'{"command": "reboot"}'),
            (env["WHARF_TOPIC_ALERTS"], "a1", b"[1, 2, 3]"),
            (env["WHARF_TOPIC_RECOMMENDATIONS"], "u1", b'{"user_id": {"deep": []}}'),
        ]
        for topic, key, value in kafka_hostile_letters:
            await producer.send_and_wait(topic, value, key=key.encode())
        await producer.send_and_wait(env["WHARF_TOPIC_REVIEWS"], codec.dumps(review), key=b"i1")  # valid: stored
        # --- then normal traffic from another device ------------------------------------------------------------
        n_ok = 30
        for seq in range(n_ok):
            honest.publish(honest.payload(seq, time.time() - n_ok + seq, temperature=4.0 + 0.1 * (seq % 3)))
        honest.flush()
        expected_letters = len(mqtt_hostile) + len(kafka_hostile_letters)
        where_ok = f"device_id = '{honest_id}'"
        try:
            await wait_until(lambda: st_.count("sensor_readings", where_ok) >= n_ok and st_.count("anomaly_scores", where_ok) >= n_ok
                             and st_.count("dead_letters") >= expected_letters and st_.count("reviews") >= 1, 120, "every input")
        except AssertionError:
            raise AssertionError(f"{st_.count('sensor_readings', where_ok)}/{n_ok} readings, {st_.count('anomaly_scores', where_ok)} scores, "
                                 f"{st_.count('dead_letters')}/{expected_letters} dead letters, {st_.count('reviews')}/1 reviews; "
                                 f"dead letters from Kafka: {st_.kafka_letters()}") from None
        await asyncio.sleep(2)  # anything extra would land now
        assert worker.proc.poll() is None and st_.bridge.proc.poll() is None, "a hostile input stopped a process"
        assert st_.count("sensor_readings", where_ok) == st_.count("anomaly_scores", where_ok) == n_ok
        assert st_.count("sensor_readings", f"device_id = '{attacker_id}'") == 0
        assert st_.count("dead_letters") == expected_letters
        letters = st_.ch.query(f"SELECT source, field, reason, payload_size, length(payload) FROM {st_.ch.table('dead_letters')}")
        assert sum(1 for source, *_ in letters if source == "mqtt") == len(mqtt_hostile)
        by_field = {(f, r) for _, f, r, _, _ in letters}
        assert any(f == "seq" for f, r in by_field), by_field  # 2^64, from MQTT and from Kafka
        assert any(f == "$" and "nests deeper" in r for f, r in by_field) or any("not valid JSON" in r for f, r in by_field)
        assert any("exceeds" in r for f, r in by_field)  # the 0.9 MiB payload: refused for its size, kept bounded
        big = [(size, kept) for _, _, _, size, kept in letters if size > 900 * 1024]
        assert big and all(kept < 100_000 for _, kept in big)  # base64 of a 64 KiB prefix
        assert any("is not a known command" in r for f, r in by_field)
        assert any("the alerts table" in r for f, r in by_field) and any("the recommendations table" in r for f, r in by_field)
        assert worker.stats()  # the web server still answers
    finally:
        await producer.stop()
        for d in devices:
            d.close()
        st_.close()
