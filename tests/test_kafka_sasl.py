"""Kafka with SASL/SCRAM and ACLs (`WHARF_KAFKA_SECURITY=sasl_scram`), on a broker of its own.

The module starts its own Kafka through `wharf.infra.up` in a temporary state folder on free
ports (about 15 s: format with SCRAM users, start, ACLs) and stops it at the end, so the rest
of the suite keeps its plaintext broker.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import GroupAuthorizationFailedError, KafkaConnectionError, TopicAuthorizationFailedError
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from mqtt_bridge.bridge import Bridge
from mqtt_bridge.connection import end_session
from tests.test_bridge import Device, consume, reading
from wharf import infra
from wharf.infra.kafka import Kafka, _java, ensure_topics, libs_dir
from streams.runtime.kafka_auth import as_user, faust_credentials, kafka_client
from schemas.redact import MASK, redact
from schemas.secrets import kafka_password
from schemas.settings import Settings

pytestmark = [pytest.mark.infra, pytest.mark.slow]


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def sasl(tmp_path_factory) -> Iterator[Settings]:
    """Wharf's settings with SASL on, against a Kafka started for this module."""
    broker, controller, mqtt, bridge, tls = free_ports(5)
    s = Settings(state_dir=tmp_path_factory.mktemp("sasl") / "state", kafka_bootstrap=f"127.0.0.1:{broker}",
                 kafka_controller_port=controller, kafka_security="sasl_scram", app_id="wharf-sasl", topic_partitions=2,
                 mqtt_port=mqtt, mqtt_bridge_port=bridge, mqtt_tls_port=tls)
    try:
        infra.up(s, ["kafka", "mosquitto"])  # also creates Wharf's topics, as the admin, through the SASL listener
        yield s
    finally:
        infra.down(s, ["kafka", "mosquitto"])


async def roundtrip(settings: Settings, topic: str, group: str | None = None) -> bytes:
    producer = AIOKafkaProducer(**kafka_client(settings), acks="all", enable_idempotence=True, request_timeout_ms=5000)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"hello", key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, **kafka_client(settings), group_id=group, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        msg = await asyncio.wait_for(consumer.getone(), 20)
        if group is not None:
            await consumer.commit()
        return msg.value
    finally:
        await consumer.stop()


async def test_wharf_user_produces_and_consumes_its_topics(sasl):
    assert kafka_client(sasl)["security_protocol"] == "SASL_PLAINTEXT"
    assert kafka_client(sasl)["sasl_mechanism"] == "SCRAM-SHA-512" and kafka_client(sasl)["sasl_plain_username"] == "wharf"
    topic = f"wharf.sasl.{uuid.uuid4().hex[:8]}"
    assert await ensure_topics(sasl, [topic], 2) == [topic]  # Wharf's own helper, as Wharf's user
    assert await roundtrip(sasl, sasl.topic_sensor_readings, group=f"{sasl.app_id}-probe") == b"hello"  # created at `up`
    assert await roundtrip(sasl, topic) == b"hello"


async def test_wrong_password_is_refused(sasl, caplog):
    wrong = as_user(sasl, sasl.kafka_user, "not-the-password")
    with caplog.at_level(logging.ERROR, logger="aiokafka"), pytest.raises(KafkaConnectionError):
        producer = AIOKafkaProducer(**kafka_client(wrong), request_timeout_ms=5000)
        try:
            await producer.start()
        finally:
            await producer.stop()
    assert "SaslAuthenticationFailed" in caplog.text


async def test_plaintext_client_gets_nothing(sasl):
    """No listener takes an unauthenticated client: a PLAINTEXT client on the SASL port never gets metadata."""
    producer = AIOKafkaProducer(bootstrap_servers=sasl.kafka_bootstrap, request_timeout_ms=3000)
    with pytest.raises(KafkaConnectionError):
        try:
            await producer.start()
        finally:
            await producer.stop()


async def test_topics_and_groups_outside_the_acls_are_denied(sasl):
    other = f"other.{uuid.uuid4().hex[:8]}"
    admin = Kafka(sasl).admin_settings()
    assert await ensure_topics(admin, [other], 1) == [other]  # the super user may; Wharf's user may not create it
    with pytest.raises(TimeoutError, match="TopicAuthorizationFailed"):
        await ensure_topics(sasl, [f"other.{uuid.uuid4().hex[:8]}"], 1, timeout=2)
    producer = AIOKafkaProducer(**kafka_client(sasl), request_timeout_ms=5000)
    await producer.start()
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            await producer.send_and_wait(other, b"x")
    finally:
        await producer.stop()
    with pytest.raises(GroupAuthorizationFailedError):
        await roundtrip(sasl, sasl.topic_alerts, group="someone-elses-group")


async def test_user_without_acls_is_denied_wharf_topics(sasl):
    """A valid login is not enough: a second SCRAM user (made with Kafka's own ConfigCommand) has no ACL."""
    password = uuid.uuid4().hex
    proc = subprocess.run(
        [_java(), "-cp", f"{libs_dir(sasl)}/*", "kafka.admin.ConfigCommand", "--bootstrap-server", sasl.kafka_bootstrap,
         "--command-config", str(Kafka(sasl).dir / "admin-client.properties"), "--alter", "--entity-type", "users",
         "--entity-name", "intruder", "--add-config", f"SCRAM-SHA-512=[password={password}]"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    intruder = as_user(sasl, "intruder", password)
    producer = AIOKafkaProducer(**kafka_client(intruder), request_timeout_ms=5000)
    await producer.start()  # authenticated
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            await producer.send_and_wait(sasl.topic_sensor_readings, b"x")
    finally:
        await producer.stop()


async def test_bridge_forwards_through_the_sasl_listener(sasl):
    """A Wharf component configured by the settings alone: MQTT readings reach Kafka as Wharf's user."""
    u = uuid.uuid4().hex[:8]
    s = sasl.model_copy(update={"topic_sensor_readings": f"wharf.sasl.{u}.readings", "topic_device_status": f"wharf.sasl.{u}.status",
                                "topic_dead_letters": f"wharf.sasl.{u}.dlq"})
    await ensure_topics(s, [s.topic_sensor_readings, s.topic_device_status, s.topic_dead_letters], 2)
    bridge = Bridge(s, client_id=f"sasl-bridge-{u}", share_group=f"g{u}")
    ready = asyncio.Event()
    task = asyncio.create_task(bridge.run(ready))
    device = None
    try:
        await asyncio.wait_for(ready.wait(), 20)
        await asyncio.sleep(0.3)  # SUBACK
        device = Device(s, "dev-001", "dev-001-secret")
        for seq in range(10):
            device.publish(f"wharf/site-{u}/z1/dev-001/telemetry", reading(f"site-{u}", "z1", "dev-001", seq))
        msgs = await consume(s, s.topic_sensor_readings, 10)
        assert [m.key for m in msgs] == [b"dev-001"] * 10
    finally:
        if device is not None:
            device.close()
        bridge.stop()
        await asyncio.wait_for(task, 30)
        end_session(s, bridge.client_id)


def test_faust_gets_the_same_login(sasl):
    auth = credentials_to_aiokafka_auth(faust_credentials(sasl))
    assert {k: auth[k] for k in ("security_protocol", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password")} == \
        {k: v for k, v in kafka_client(sasl).items() if k != "bootstrap_servers"}
    assert faust_credentials(sasl.model_copy(update={"kafka_security": "plaintext"})) is None


def test_password_is_generated_private_and_redacted(sasl):
    password = kafka_password(sasl)
    assert len(password) >= 32
    assert redact(f"login failed for {password}") == f"login failed for {MASK}"
    assert sasl.shown()["WHARF_KAFKA_PASSWORD"] == ""  # not set: read from the secrets folder, never shown
    assert password not in (Kafka(sasl).dir / "kafka.log").read_text()
    assert (Kafka(sasl).dir / "server.properties").stat().st_mode & 0o077 == 0  # it holds the admin password
