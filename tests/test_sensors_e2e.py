"""The sensor path end to end on the real services: devices -> Mosquitto -> `wharf bridge` -> Kafka ->
`wharf worker` -> ClickHouse, alarms back on the alerts topic and over MQTT.

The helpers here are shared with tests/test_sensor_faults.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from aiokafka import AIOKafkaConsumer

from mqtt_bridge.connection import end_session
from schemas import codec
from schemas.events import AnomalyScore
from streams.sinks.clickhouse import connect
from streams.runtime.kafka_auth import kafka_client
from schemas.settings import Settings
from tests.conftest import topic_env
from tests.workers import ROOT, WorkerProcess

pytestmark = [pytest.mark.infra, pytest.mark.slow]

SITE = "s1"


# --- helpers -----------------------------------------------------------------------------------------------------


def sensor_env(stack, server_url: str, unique: str, **over: str) -> dict[str, str]:
    env = {
        "WHARF_APP_ID": f"wharf-test-sensors-{unique}",
        **topic_env(unique),
        "WHARF_CLICKHOUSE_URL": f"{server_url}/sens_{unique}",
        "WHARF_SINK_BATCH_ROWS": "2000",
        "WHARF_SINK_BATCH_SECONDS": "0.3",
        "WHARF_SENSOR_CHECKPOINT_SECONDS": "2",
        "WHARF_SENSOR_ALARM_CLEAR_SECONDS": "3",
        "WHARF_SENSOR_MODEL_OPTIONS": '{"use_forecaster": false}',  # test speed on 2 cores; the ensemble is tested elsewhere
        "WHARF_SINK_RETRY_MAX_SECONDS": "2",
    }
    env.update(over)
    return env


async def make_topics(stack, env: dict[str, str]) -> None:
    from streams.runtime.topics import topic_names
    from wharf.infra.kafka import ensure_topics
    from schemas.settings import Settings

    s = Settings(**{k[len("WHARF_"):].lower(): v for k, v in env.items() if k.startswith("WHARF_TOPIC_")})
    await ensure_topics(stack, topic_names(s), stack.topic_partitions)


def add_devices(settings, ids: list[str]) -> None:
    """Register devices for the test's site (password `<id>-secret`, test-only) on the running test Mosquitto: it
    rewrites the password and ACL files and reloads them (SIGHUP)."""
    from pydantic import SecretStr

    from wharf.infra.mosquitto import Mosquitto

    grown = settings.model_copy(update={
        "mqtt_devices": SecretStr(",".join([settings.mqtt_devices.get_secret_value(), *(f"{d}:{d}-secret" for d in ids)])),
        "mqtt_device_registry": ",".join([settings.mqtt_device_registry, *(f"{d}={SITE}/+" for d in ids)]),
    })
    Mosquitto(grown).start()
    time.sleep(0.5)


class Device:
    def __init__(self, settings, device_id: str, zone: str = "z1", device_type: str = "cold_room"):
        self.id, self.zone, self.type = device_id, zone, device_type
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{device_id}-{time.time_ns()}", protocol=mqtt.MQTTv311)
        self.c.username_pw_set(device_id, f"{device_id}-secret")
        ok = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: ok.set() if not rc.is_failure else None
        self.c.connect(settings.mqtt_host, settings.mqtt_port)
        self.c.loop_start()
        assert ok.wait(10), f"{device_id} could not connect"
        self.infos: list = []

    @property
    def topic(self) -> str:
        return f"wharf/{SITE}/{self.zone}/{self.id}/telemetry"

    def payload(self, seq: int, ts: float, **metrics: float) -> bytes:
        return codec.dumps({"site": SITE, "zone": self.zone, "device_id": self.id, "device_type": self.type, "ts": ts,
                            "seq": seq, "metrics": metrics})

    def publish(self, payload: bytes, topic: str | None = None) -> None:
        self.infos.append(self.c.publish(topic or self.topic, payload, qos=1))

    def flush(self, timeout: float = 30) -> None:
        for info in self.infos:
            info.wait_for_publish(timeout)
        self.infos.clear()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


class BridgeProcess:
    def __init__(self, env: dict[str, str], log: Path, client_id: str, share_group: str):
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.log, self.client_id, self.share_group = log, client_id, share_group
        self.proc: subprocess.Popen | None = None

    def start(self) -> BridgeProcess:
        out = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "wharf.cli", "bridge", "--client-id", self.client_id,
                                      "--share-group", self.share_group, "--loglevel", "warning"],
                                     cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        time.sleep(3)  # connect + SUBACK
        assert self.proc.poll() is None, self.log.read_text()[-2000:]
        return self

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill9()


async def wait_until(predicate, timeout: float, what: str, every: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def read_topic(settings: Settings, topic: str, idle: float = 2.0) -> list:
    c = AIOKafkaConsumer(topic, **kafka_client(settings), auto_offset_reset="earliest", enable_auto_commit=False)
    await c.start()
    out = []
    try:
        last = time.monotonic()
        while time.monotonic() - last < idle:
            got = await c.getmany(timeout_ms=300)
            for msgs in got.values():
                out.extend(msgs)
                last = time.monotonic()
    finally:
        await c.stop()
    return out


class Stack:
    """One test's worker(s), bridge and ClickHouse database."""

    def __init__(self, stack, env, tmp_path: Path, unique: str):
        self.settings, self.env, self.tmp, self.unique = stack, env, tmp_path, unique
        self.ch = connect(env["WHARF_CLICKHOUSE_URL"])
        self.workers: list[WorkerProcess] = []
        self.bridge = BridgeProcess(env, tmp_path / "bridge.log", f"bridge-{unique}", f"g{unique}")

    def worker(self, n: int = 0) -> WorkerProcess:
        return WorkerProcess(self.env, web_port=self.settings.web_port + 10 + n, log=self.tmp / f"worker{n}.log")

    def count(self, table: str, where: str = "1") -> int:
        return self.ch.query(f"SELECT count() FROM {self.ch.table(table)} WHERE {where}")[0][0]

    def distinct_readings(self) -> int:
        return self.ch.query(f"SELECT count() FROM (SELECT device_id, seq FROM {self.ch.table('sensor_readings')} GROUP BY device_id, seq)")[0][0]

    def kafka_letters(self) -> list[tuple]:
        """(kind, topic, field, reason) of the dead letters of Kafka records, for failure messages."""
        return self.ch.query(f"SELECT kind, src_topic, field, reason FROM {self.ch.table('dead_letters')} WHERE source = 'kafka'")

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        self.bridge.stop()
        end_session(self.settings, self.bridge.client_id)  # its queue would fill with every later test's telemetry
        try:
            self.ch.command(f"DROP DATABASE IF EXISTS {self.ch.database}")
        except Exception:  # noqa: BLE001 - cleanup only
            pass


# --- the test ------------------------------------------------------------------------------------------------------


async def test_devices_through_bridge_and_worker_exactly_once_with_alarm_raised_and_cleared(stack, server_url, unique, tmp_path):
    env = sensor_env(stack, server_url, unique, WHARF_SENSOR_PUBLISH_SCORES="true")
    await make_topics(stack, env)
    n_devices, per_device = 12, 60
    ids = [f"e{unique[:6]}-{i:02d}" for i in range(n_devices)]
    watcher_id = f"e{unique[:6]}-watch"  # a login of its own: on device ports the client id is the user name
    add_devices(stack, [*ids, watcher_id])
    st = Stack(stack, env, tmp_path, unique)
    st.workers.append(st.worker().start())
    st.bridge.start()
    alerts_seen: list[dict] = []
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"watch-{unique}", protocol=mqtt.MQTTv311)
    watcher.username_pw_set(watcher_id, f"{watcher_id}-secret")
    watcher.on_message = lambda c, u, m: alerts_seen.append(codec.loads(m.payload))
    watcher.connect(stack.mqtt_host, stack.mqtt_port)
    watcher.subscribe(f"wharf/{SITE}/alerts", qos=1)
    watcher.loop_start()
    devices = [Device(stack, d) for d in ids]
    faulty = devices[3]
    t0 = time.time() - 2 * per_device
    bad = 0
    try:
        for seq in range(per_device):
            for d in devices:
                temp = 4.0 + 0.3 * ((seq * 7 + hash(d.id)) % 5) / 5
                if d is faulty and 20 <= seq < 26:
                    temp = 11.0  # a cold room at 11 °C: rule alarm
                d.publish(d.payload(seq, t0 + seq, temperature=temp, humidity=50.0 + seq % 3))
                if d is devices[0] and seq % 10 == 5:
                    d.publish(d.payload(seq, t0 + seq, temperature=temp, humidity=50.0 + seq % 3))  # a redelivered copy
            if seq % 20 == 7:  # malformed payloads between valid ones
                devices[1].publish(b"{not json")
                devices[2].publish(codec.dumps({"site": SITE, "zone": "z1", "device_id": devices[2].id, "device_type": "cold_room",
                                                "ts": time.time(), "seq": 1000 + seq, "metrics": {"temperature": "warm"}}))
                bad += 2
        for d in devices:
            d.flush()
        n_valid = n_devices * per_device
        try:
            await wait_until(lambda: st.count("sensor_readings") >= n_valid and st.count("anomaly_scores") >= n_valid
                             and st.count("dead_letters") >= bad, 120, "all rows")
        except AssertionError:
            raise AssertionError(f"{st.count('sensor_readings')}/{n_valid} readings, {st.count('anomaly_scores')} scores, "
                                 f"{st.count('dead_letters')}/{bad} dead letters; worker {st.workers[0].stats()}") from None
        await wait_until(lambda: st.count("alerts", f"source_id = '{faulty.id}' AND status = 'CLEARED_UNACK'") >= 1, 30, "alarm cleared")
        await asyncio.sleep(1.5)  # anything extra (a duplicate) would land now
        assert st.count("sensor_readings") == n_valid == st.distinct_readings()
        assert st.count("anomaly_scores") == n_valid
        assert st.count("dead_letters") == bad
        reasons = dict(st.ch.query(f"SELECT field, any(reason) FROM {st.ch.table('dead_letters')} GROUP BY field"))
        assert "not valid JSON" in reasons["$"] and "must be a number" in reasons["metrics"]
        alerts = [codec.loads(m.value) for m in await read_topic(stack, env["WHARF_TOPIC_ALERTS"])]
        rule = [a for a in alerts if a["source_id"] == faulty.id and a["alarm_type"] == "rule:temperature"]
        assert [a["status"] for a in rule] == ["ACTIVE_UNACK", "CLEARED_UNACK"], rule
        assert rule[0]["severity"] == "CRITICAL" and rule[0]["alarm_id"] == rule[1]["alarm_id"]
        assert rule[1]["end_ts"] - rule[0]["start_ts"] >= 6 + 3 - 1  # six bad seconds, then three normal ones
        assert st.count("alerts") == len(alerts)
        published = [AnomalyScore.model_validate_json(m.value) for m in await read_topic(stack, env["WHARF_TOPIC_ANOMALY_SCORES"])]
        stored = sorted(st.ch.query(f"SELECT device_id, seq, score FROM {st.ch.table('anomaly_scores')}"))
        published.sort(key=lambda m: (m.device_id, m.seq))
        assert [(m.device_id, m.seq) for m in published] == [(d, q) for d, q, _ in stored]  # the topic: one per stored row
        assert [m.score for m in published] == pytest.approx([x for _, _, x in stored], rel=1e-6)  # the table's Float32
        await wait_until(lambda: any(a["alarm_id"] == rule[1]["alarm_id"] and a["status"] == "CLEARED_UNACK" for a in alerts_seen),
                         20, "the alarm over MQTT")
    finally:
        watcher.loop_stop()
        for d in devices:
            d.close()
        st.close()
