"""`wharf demo`: the whole system, live, from one command.

Starts the real servers (Kafka, Mosquitto; the ClickHouse server too when the
settings point at it, else embedded chdb), a Faust worker (agents, models,
dashboard), the MQTT bridge, and the simulators: a warehouse of authenticated
MQTT devices with injected faults, and a shop producing clicks and reviews.
Prints where to look and a health line every few seconds. Ctrl-C stops the
simulators, the bridge, the worker and the servers it started, cleanly; the
data stays in the state folder and the next run continues from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaProducer
from rich.console import Console

from schemas import codec
from streams.web.credentials import KeySource
from wharf import infra
from streams.runtime.kafka_auth import kafka_client
from schemas.redact import redact
from schemas.secrets import parse_registry, register_devices
from schemas.settings import Settings
from wharf.simulator.devices import DeviceFleet
from wharf.simulator.shop import ShopConfig, ShopSimulator
from wharf.simulator.warehouse import WarehouseConfig, WarehouseSimulator


@dataclass
class DemoOptions:
    duration: float | None = None
    speed: float = 1.0
    interval: float = 1.0
    shop_rate: float = 20.0
    fault_every: float = 90.0
    seed: int = 7


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None


CHILD_STOP_SECONDS = 8.0  # each child stops within this of SIGTERM (the worker's own watchdog: streams/runtime/stopping.py), else SIGKILL
SIMULATORS_STOP_SECONDS = 1.0  # the shop's producer and the device fleet's thread, before the children


def stop_children(children: list[Child], timeout: float = CHILD_STOP_SECONDS) -> None:
    """SIGTERM to every child at once (each stores and commits what it acked, in parallel), then SIGKILL to any
    still there after `timeout`: what it had not committed is read again at the next start, nothing is lost."""
    running = [c for c in children if c.alive()]
    for child in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in running:
        try:
            child.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGKILL)
            child.proc.wait()


def _spawn(name: str, args: list[str], settings: Settings, env: dict[str, str]) -> Child:
    log = settings.state_dir / f"{name}.log"
    out = open(log, "ab")
    proc = subprocess.Popen([sys.executable, "-m", "wharf.cli", *args], stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, **settings.env(), **env, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    return Child(name, proc, log)


def _get(url: str, path: str, token: str) -> dict | None:
    """GET `path` (no leading slash) of the worker at `url` as an operator, as JSON; None if it does not answer."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url + path, headers={"Authorization": f"Bearer {token}"}), timeout=5) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def demo_shop(seed: int, rate: float, start: float) -> ShopSimulator:
    """The demo's shop (500 users, 400 items, a defective item every 10 minutes), also driven by `wharf bench learner`."""
    return ShopSimulator(ShopConfig(seed=seed, events_per_second=rate, start_ts=start, n_users=500, n_items=400,
                                    defect_every_s=600.0, defect_duration_s=300.0, review_delay_s=20.0, p_review=0.5))


@dataclass
class ShopFeeder:
    """The shop simulator in real time: clicks and reviews straight to Kafka, as a shop backend would send them."""

    settings: Settings
    rate: float
    seed: int
    sent: dict[str, int] = field(default_factory=lambda: {"click": 0, "review": 0})

    async def run(self, stop: asyncio.Event) -> None:
        start = time.time()
        sim = demo_shop(self.seed, self.rate, start)
        stream = sim.stream()
        producer = AIOKafkaProducer(**kafka_client(self.settings), acks="all", enable_idempotence=True, linger_ms=5)
        await producer.start()
        try:
            pending = next(stream)
            while not stop.is_set():
                kind, payload = pending
                wait = payload["ts"] - time.time()
                if wait > 0:
                    try:
                        await asyncio.wait_for(stop.wait(), timeout=min(wait, 1.0))
                    except TimeoutError:
                        pass
                    continue
                topic, key = ((self.settings.topic_clicks, payload["user_id"]) if kind == "click"
                              else (self.settings.topic_reviews, payload["item_id"]))
                await producer.send(topic, codec.dumps(payload), key=key.encode())
                self.sent[kind] += 1
                pending = next(stream)
            await producer.flush()
        finally:
            await producer.stop()


def run(settings: Settings, options: DemoOptions, console: Console) -> int:
    started = time.monotonic()
    warehouse = WarehouseSimulator(WarehouseConfig(seed=options.seed, interval_s=options.interval, start_ts=time.time(),
                                                   fault_every_s=options.fault_every, first_fault_after_s=min(60.0, options.fault_every),
                                                   fault_duration_s=min(40.0, options.fault_every),
                                                   # after the models' probation (`WHARF_SENSOR_ANOMALY_PROBATION` readings)
                                                   compressor_after_s=settings.sensor_anomaly_probation * options.interval + 300.0))
    # The warehouse's devices join the registry; `infra.up` gives them passwords (secrets folder) and ACL entries.
    register_devices(settings, parse_registry(warehouse.registry_setting(), "demo"))
    truth = settings.state_dir / "faults.jsonl"

    console.print("[bold]Wharf demo[/bold] — starting the servers ...")
    already = {st.name for st in infra.status(settings) if st.running}
    for st in infra.up(settings, infra.default_services(settings)):
        console.print(f"  [green]✓[/green] {st.name:<10} {st.where}" + (" (already running)" if st.name in already else ""), soft_wrap=True)
    ours = [name for name in infra.default_services(settings) if name not in already]
    env = {"OPENBLAS_NUM_THREADS": "1"}
    # The one place with a default credential: a demo whose user configured no operator token gets a fresh one
    # (normally the one `wharf infra up` generated into the secrets folder), and prints it to log in with.
    explicit = KeySource.of(settings.web_operator_tokens.get_secret_value(), "").keys()
    configured = explicit or KeySource.of("", settings.operator_tokens_file()).keys()
    token = configured[0] if configured else secrets.token_urlsafe(24)
    if not configured:
        env["WHARF_WEB_OPERATOR_TOKENS"] = token
    # A livelier demo where the user has not chosen: alarms clear 20 s after a fault, snapshots every 15 s.
    for name, value in (("WHARF_SENSOR_ALARM_CLEAR_SECONDS", "20"), ("WHARF_COMMERCE_SNAPSHOT_SECONDS", "15")):
        if name not in os.environ:
            env[name] = value
    children = [_spawn("worker", ["worker", "--loglevel", "warning"], settings, env),
                _spawn("bridge", ["bridge", "--loglevel", "warning"], settings, env)]
    fleet: DeviceFleet | None = None
    url = f"http://{settings.advertised_web_host()}:{settings.web_port}/"  # once: a wildcard bind finds its route to Kafka
    try:
        console.print("starting the worker and the bridge ...")
        while _get(url, "stats", token) is None:
            dead = [c for c in children if not c.alive()]
            if dead:
                console.print(f"[red]{dead[0].name} exited with {dead[0].proc.returncode}[/red]; see {dead[0].log}", soft_wrap=True)
                return 1
            time.sleep(0.5)
        fleet = DeviceFleet(settings, warehouse, speed=options.speed, truth_file=truth)
        fleet.connect()
        console.print(f"ready in {time.monotonic() - started:.0f}s.\n")
        console.print(f"  [bold]dashboard[/bold]     {url}", soft_wrap=True)
        console.print("  operator token  " + (f"{token}   (log in with it; set WHARF_WEB_OPERATOR_TOKENS for your own)" if not explicit
                                              else "the first of WHARF_WEB_OPERATOR_TOKENS[_FILE]"), soft_wrap=True)
        console.print(f"  recommendations {url}recommendations/<user_id>?k=10   health {url}stats   (header Authorization: Bearer <token>)", soft_wrap=True)
        console.print(f"  devices         {len(warehouse.devices)} over MQTT {settings.mqtt_host}:{settings.mqtt_port} (faults every ~{options.fault_every:.0f}s, ground truth {truth})", soft_wrap=True)
        console.print(f"  topics          {settings.topic_sensor_readings}, {settings.topic_alerts}, {settings.topic_clicks}, {settings.topic_reviews}, {settings.topic_dead_letters}", soft_wrap=True)
        console.print(f"  ClickHouse      {redact(settings.clickhouse_url)}: sensor_readings, anomaly_scores, alerts, clicks, reviews, recommendations, dead_letters (+ views sensor_minute, clicks_minute, item_sentiment_hourly)", soft_wrap=True)
        console.print(f"  logs            {settings.state_dir}/worker.log, bridge.log", soft_wrap=True)
        console.print("  stop with Ctrl-C (data stays in the state folder)\n")
        fleet_thread = threading.Thread(target=fleet.run, name="device-fleet", daemon=True)
        fleet_thread.start()
        code = asyncio.run(_watch(settings, url, token, options, console, children, fleet))
        fleet.stop()
        fleet_thread.join(SIMULATORS_STOP_SECONDS)
        return code
    finally:
        console.print("stopping ...")
        if fleet is not None:
            fleet.stop()
        # The simulators stopped first; the devices stay connected until the worker is gone: it must not see them
        # fall silent as they stop.
        stop_children(children)
        if fleet is not None:
            fleet.close()
        infra.down(settings, ours)  # only the servers this demo started
        console.print(f"stopped. State kept in {settings.state_dir}.", soft_wrap=True)


async def _watch(settings: Settings, url: str, token: str, options: DemoOptions, console: Console, children: list[Child],
                 fleet: DeviceFleet) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    shop = ShopFeeder(settings, options.shop_rate, options.seed)
    shop_task = asyncio.create_task(shop.run(stop))
    t0 = time.monotonic()
    last: tuple[float, dict[str, int]] = (t0, {})
    code = 0
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=5.0)
        except TimeoutError:
            pass
        if options.duration is not None and time.monotonic() - t0 >= options.duration:
            stop.set()
        if stop.is_set():  # a signal: stop now, not after another health line (its requests may wait seconds)
            break
        dead = [c for c in children if not c.alive()]
        if dead:
            console.print(f"[red]{dead[0].name} exited with {dead[0].proc.returncode}[/red]; see {dead[0].log}", soft_wrap=True)
            code = 1
            stop.set()
            break
        stats = await asyncio.to_thread(_get, url, "stats", token) or {}
        dash = await asyncio.to_thread(_get, url, "api/dashboard", token) or {}
        tables = stats.get("tables", {})
        now = time.monotonic()
        rates = {k: (tables.get(k, 0) - last[1].get(k, 0)) / max(now - last[0], 1e-6) for k in ("sensor_readings", "clicks", "reviews")}
        last = (now, dict(tables))
        errors = [w.get("last_error") for w in stats.get("writers", {}).values() if w.get("last_error")]
        lag = sum(w.get("pending_rows", 0) for w in stats.get("writers", {}).values())
        console.print(
            f"[{time.strftime('%H:%M:%S')}] readings {rates['sensor_readings']:.0f}/s  clicks {rates['clicks']:.0f}/s  reviews {rates['reviews']:.1f}/s"
            f" | stored {tables.get('sensor_readings', 0)} readings, {tables.get('anomaly_scores', 0)} scores, {tables.get('dead_letters', 0)} dead letters"
            f" | pending {lag} | active alarms {len(dash.get('active_alarms', []))} | faults {fleet.stats.faults_started}"
            + (f" | last error: {errors[-1]}" if errors else ""),
            soft_wrap=True,
        )
    try:  # the shop stops first (its producer flushes what it sent), bounded: a stop takes seconds, not minutes
        await asyncio.wait_for(shop_task, SIMULATORS_STOP_SECONDS)
    except TimeoutError:
        console.print("[yellow]the shop simulator did not stop in time[/yellow]")
    return code
