"""A clean stop (SIGTERM / SIGINT) of `wharf worker`, `wharf bridge` and `wharf demo` on the real servers.

The contract (issue 21, item 6): the process stops taking new records, stores what it took (or leaves it
unacked, to be read again), commits what is stored, and exits within `STOP_SECONDS`; a fresh process on the
same topics then ends with every input stored exactly once. The stop deadline is a behaviour the operator
relies on (a supervisor kills what does not stop), not a speed figure: it is asserted.
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

import pytest
from aiokafka import AIOKafkaProducer

from mqtt_bridge.connection import end_session
from schemas import codec
from streams.sinks.clickhouse import connect
from tests.test_sensors_e2e import SITE, BridgeProcess, Device, add_devices, make_topics, read_topic, sensor_env, wait_until
from tests.workers import ROOT, WorkerProcess
from streams.runtime.kafka_auth import kafka_client
from wharf.bench.cpu import family
from wharf.infra.process import running as alive

pytestmark = [pytest.mark.infra, pytest.mark.slow]

STOP_SECONDS = 10.0  # issue 21: everything stops within 10 s of the signal


def stop_and_time(proc: subprocess.Popen, sig: int = signal.SIGTERM, limit: float = 60.0) -> float:
    """Send `sig` to the process group; seconds until the process exited (killed, and `limit` returned, if never)."""
    started = time.monotonic()
    os.killpg(proc.pid, sig)
    try:
        proc.wait(limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return limit
    return time.monotonic() - started


async def restart(server) -> None:  # noqa: ANN001 - wharf.infra.kafka.Kafka
    """Start Kafka again; its port may still be held for a few seconds after the stop."""
    from wharf.infra.process import ServiceError

    for attempt in range(4):
        try:
            await asyncio.to_thread(server.start)
            return
        except ServiceError:
            if attempt == 3:
                raise
            await asyncio.sleep(5)


def reading(device: str, seq: int) -> bytes:
    return codec.dumps({"site": SITE, "zone": "z1", "device_id": device, "device_type": "cold_room", "ts": time.time(),
                        "seq": seq, "metrics": {"temperature_c": 2.0 + (seq % 7) * 0.1, "door_open": 0.0}})


def click(user: str, n: int) -> bytes:
    return codec.dumps({"event_id": f"c-{user}-{n}", "user_id": user, "session_id": f"s-{user}", "item_id": f"it-{n % 40}",
                        "action": "view", "ts": time.time(), "category": "books", "price": 10.0})


class Load:
    """Readings and clicks straight to Kafka at a steady rate, in a thread of its own, until stopped."""

    def __init__(self, settings, env: dict[str, str], rate: float, devices: int = 20, users: int = 50) -> None:
        self.settings, self.env, self.rate = settings, env, rate
        self.devices = [f"d{i:03d}" for i in range(devices)]
        self.users = [f"u{i:03d}" for i in range(users)]
        self.readings = 0
        self.clicks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive()

    async def _run(self) -> None:
        producer = AIOKafkaProducer(**kafka_client(self.settings), acks="all", enable_idempotence=True, linger_ms=5)
        await producer.start()
        try:
            tick, per_tick = 0.05, max(1, int(self.rate * 0.05))
            while not self._stop.is_set():
                for _ in range(per_tick):
                    n = self.readings
                    device = self.devices[n % len(self.devices)]
                    await producer.send(self.env["WHARF_TOPIC_SENSOR_READINGS"], reading(device, n // len(self.devices)), key=device.encode())
                    self.readings += 1
                    user = self.users[self.clicks % len(self.users)]
                    await producer.send(self.env["WHARF_TOPIC_CLICKS"], click(user, self.clicks), key=user.encode())
                    self.clicks += 1
                await asyncio.sleep(tick)
            await producer.flush()
        finally:
            await producer.stop()


def worker_env(stack, server_url: str, unique: str, tmp_path: Path) -> dict[str, str]:
    return sensor_env(stack, server_url, unique, **{
        "WHARF_STATE_DIR": str(tmp_path / "state"),
        "WHARF_COMMERCE_SENTIMENT_ENCODER": "hashing",
        "WHARF_COMMERCE_CHECKPOINT_SECONDS": "2",
        "WHARF_SENSOR_CHECKPOINT_SECONDS": "2",
    })


@pytest.mark.parametrize("clickhouse", ["up", "down"])
async def test_worker_stops_within_deadline_under_load_and_loses_nothing(stack, server_url, unique, tmp_path, clickhouse):
    """With ClickHouse down at the stop, what the writers hold cannot be stored: it must not be acked either."""
    from wharf.infra.clickhouse_server import ClickHouseServer

    env = worker_env(stack, server_url, unique, tmp_path)
    await make_topics(stack, env)
    ch = connect(env["WHARF_CLICKHOUSE_URL"])
    count = lambda sql: ch.query(sql.format(r=ch.table("sensor_readings"), s=ch.table("anomaly_scores"), c=ch.table("clicks")))[0][0]  # noqa: E731
    load = Load(stack, env, rate=200).start()
    worker = WorkerProcess(env, web_port=stack.web_port + 50, log=tmp_path / "worker1.log")
    second = WorkerProcess(env, web_port=stack.web_port + 51, log=tmp_path / "worker2.log")
    try:
        worker.start()
        await wait_until(lambda: count("SELECT count() FROM {c}") > 200 and count("SELECT count() FROM {r}") > 200, 90,
                         "the first worker to store readings and clicks")
        await asyncio.sleep(3)  # past a checkpoint or two: state, acks and commits under way
        server = ClickHouseServer(stack)
        if clickhouse == "down":
            await asyncio.to_thread(server.stop)
            await asyncio.sleep(2)  # rows pile up in the writers
        try:
            took = stop_and_time(worker.proc, signal.SIGTERM)
        finally:
            if clickhouse == "down":
                await asyncio.to_thread(server.start)
        print(f"worker stopped {took:.2f} s after SIGTERM (ClickHouse {clickhouse})")
        log = worker.log.read_text()
        assert took < STOP_SECONDS, f"worker took {took:.1f}s to stop under load; log:\n{log[-3000:]}"
        assert worker.proc.returncode == 0, f"exit {worker.proc.returncode}; log:\n{log[-3000:]}"
        await asyncio.sleep(1)  # load still flowing while no worker runs
        load.stop()
        second.start()
        n_r, n_c = load.readings, load.clicks
        totals = lambda: (count("SELECT count() FROM {r}"), count("SELECT count() FROM {s}"), count("SELECT count() FROM {c}"))  # noqa: E731
        await wait_until(lambda: totals() >= (n_r, n_r, n_c), 120, f"{n_r} readings, scores and {n_c} clicks stored")
        await asyncio.sleep(2)  # nothing more arrives (a duplicate would)
        assert totals() == (n_r, n_r, n_c)
        assert count("SELECT uniqExact(device_id, seq) FROM {r}") == n_r
        assert count("SELECT uniqExact(device_id, seq) FROM {s}") == n_r
        assert count("SELECT uniqExact(event_id) FROM {c}") == n_c
    finally:
        load._stop.set()
        worker.stop()
        second.stop()
        ch.command(f"DROP DATABASE IF EXISTS {ch.database}")


class Publishers:
    """Devices publishing QoS 1 readings in a thread until stopped; `sent` counts what Mosquitto acknowledged."""

    def __init__(self, settings, ids: list[str], rate: float) -> None:
        self.devices = [Device(settings, d) for d in ids]
        self.rate = rate
        self.seq = dict.fromkeys(ids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Publishers:
        self._thread.start()
        return self

    def _run(self) -> None:
        per_tick = max(1, int(self.rate * 0.05 / len(self.devices)))
        while not self._stop.is_set():
            for device in self.devices:
                for _ in range(per_tick):
                    device.publish(device.payload(self.seq[device.id], time.time(), temperature_c=3.0))
                    self.seq[device.id] += 1
            time.sleep(0.05)

    def stop(self) -> int:
        """Stop publishing; every message published is acknowledged by Mosquitto (QoS 1) before this returns."""
        self._stop.set()
        self._thread.join(30)
        for device in self.devices:
            device.flush()
            device.close()
        return sum(self.seq.values())


@pytest.mark.parametrize("kafka", ["up", "down"])
async def test_bridge_stops_within_deadline_while_devices_publish_and_loses_nothing(stack, server_url, unique, tmp_path, kafka):
    """With Kafka down at the stop nothing in flight is confirmed: it is not acked, and Mosquitto delivers it again."""
    from wharf.infra.kafka import Kafka

    env = sensor_env(stack, server_url, unique)
    await make_topics(stack, env)
    ids = [f"b{unique[:6]}-{i:02d}" for i in range(4)]
    add_devices(stack, ids)
    first = BridgeProcess(env, tmp_path / "bridge1.log", f"bridge-{unique}", f"g{unique}")
    second = BridgeProcess(env, tmp_path / "bridge2.log", f"bridge-{unique}", f"g{unique}")  # the same persistent session
    publishers = None
    try:
        first.start()
        publishers = Publishers(stack, ids, rate=400).start()
        await asyncio.sleep(4)
        server = Kafka(stack)
        if kafka == "down":
            await asyncio.to_thread(server.stop)
            await asyncio.sleep(1)  # messages wait for Kafka's confirmation
        try:
            took = stop_and_time(first.proc, signal.SIGTERM)
        finally:
            if kafka == "down":
                await restart(server)
        print(f"bridge stopped {took:.2f} s after SIGTERM (Kafka {kafka})")
        log = first.log.read_text()
        assert took < STOP_SECONDS, f"bridge took {took:.1f}s to stop; log:\n{log[-3000:]}"
        assert first.proc.returncode == 0, f"exit {first.proc.returncode}; log:\n{log[-3000:]}"
        await asyncio.sleep(1)  # published while no bridge runs: queued in the session
        sent = publishers.stop()
        expected = {(d, s) for d, n in publishers.seq.items() for s in range(n)}
        publishers = None
        second.start()
        topic = env["WHARF_TOPIC_SENSOR_READINGS"]

        async def forwarded() -> list[tuple[str, int]]:
            return [(r["device_id"], r["seq"]) for r in (codec.loads(m.value) for m in await read_topic(stack, topic, idle=1.0))]

        deadline = time.monotonic() + 60
        got = await forwarded()
        while not expected <= set(got) and time.monotonic() < deadline:
            await asyncio.sleep(1)
            got = await forwarded()
        print(f"{sent} readings published, {len(got)} forwarded")
        assert set(got) == expected, f"missing {len(expected - set(got))} of {sent}, unexpected {len(set(got) - expected)}"
        if kafka == "up":  # the bridge PUBACKs what Kafka confirmed, and a clean stop waits for what is in flight: no copies
            assert len(got) == sent, f"{len(got) - sent} readings forwarded twice"
        # With Kafka down, a record Kafka wrote but could not confirm is sent again (at least once; the worker drops
        # the copy by (device_id, seq, ts), tests/test_sensor_faults.py).
    finally:
        if publishers is not None:
            publishers.stop()
        first.stop()
        second.stop()
        end_session(stack, f"bridge-{unique}")


def descendants(pid: int) -> set[int]:
    """Every process below `pid` now (from /proc)."""
    return set(family(pid)) - {pid}


async def test_demo_stops_everything_within_deadline_on_ctrl_c(stack, server_url, unique, tmp_path):
    """`wharf demo` against the running servers (so it starts none and stops none): its worker, learners, bridge
    and simulators are gone within the deadline of one SIGINT, and the worker committed what it stored."""
    env = worker_env(stack, server_url, unique, tmp_path)
    env.pop("WHARF_STATE_DIR")  # the demo registers its devices with the running Mosquitto, in the stack's state folder
    env["WHARF_WEB_PORT"] = str(stack.web_port + 52)
    await make_topics(stack, env)
    ch = connect(env["WHARF_CLICKHOUSE_URL"])
    count = lambda table: ch.query(f"SELECT count() FROM {ch.table(table)}")[0][0] if ch.query(  # noqa: E731
        f"EXISTS TABLE {ch.table(table)}")[0][0] else 0
    log = tmp_path / "demo.log"
    demo = subprocess.Popen([sys.executable, "-m", "wharf.cli", "demo", "--shop-rate", "50", "--fault-every", "30"], cwd=ROOT,
                            env={**os.environ, **env, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    below: set[int] = set()  # the demo's processes, known before it stops (orphans lose their parent)
    try:
        await wait_until(lambda: demo.poll() is not None or (count("sensor_readings") > 50 and count("clicks") > 100), 180,
                         "the demo to store readings and clicks")
        assert demo.poll() is None, log.read_text()[-3000:]
        await asyncio.sleep(3)
        below = descendants(demo.pid)
        assert len(below) >= 3, below  # the worker, its learner(s), the bridge
        took = stop_and_time(demo, signal.SIGINT)
        print(f"demo stopped {took:.2f} s after SIGINT")
        text = log.read_text()
        assert took < STOP_SECONDS, f"demo took {took:.1f}s to stop; log:\n{text[-3000:]}"
        assert demo.returncode == 0, text[-3000:]
        time.sleep(0.5)  # learners die with their worker (PR_SET_PDEATHSIG): the kernel signals them as it exits
        assert not [p for p in below if alive(p)], f"left running: {[p for p in below if alive(p)]}"
        assert "stopped." in text
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
        for pid in below | descendants(demo.pid):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        end_session(stack, "wharf-bridge-1")
        ch.command(f"DROP DATABASE IF EXISTS {ch.database}")
