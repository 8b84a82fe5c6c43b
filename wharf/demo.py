"""`wharf demo`: the real stack end to end, watched from the terminal.

Starts the servers, a Faust worker, and a producer of synthetic telemetry and
clicks (with a few malformed records on purpose), then prints every second how
many rows reached ClickHouse and how many records were dead-lettered. Ctrl-C
stops the producer, the worker and the servers cleanly; the data stays in the
state folder and the next run continues from it.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from rich.console import Console

from schemas import codec
from wharf import infra
from wharf.settings import Settings

DEVICE_TYPES = {"cold_room": {"temperature": (4.0, 0.6), "humidity": (60.0, 5.0)}, "conveyor": {"vibration": (0.3, 0.05)}}


@dataclass
class Producer:
    """Synthetic traffic straight to Kafka: readings of 12 devices and shop clicks, 1 malformed record in 200."""

    settings: Settings
    rate: float
    seed: int = 7
    sent: dict[str, int] = field(default_factory=lambda: {"readings": 0, "clicks": 0, "malformed": 0})

    async def run(self, stop: asyncio.Event) -> None:
        rnd = random.Random(self.seed)
        devices = [(f"site-{i % 2 + 1}", f"zone-{i % 3 + 1}", f"dev-{i:03d}", "cold_room" if i % 3 else "conveyor") for i in range(12)]
        seq = {d[2]: int(time.time()) * 10 for d in devices}  # monotonic across demo runs
        producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
        await producer.start()
        try:
            n = 0
            while not stop.is_set():
                n += 1
                site, zone, device_id, dtype = devices[n % len(devices)]
                seq[device_id] += 1
                metrics = {m: round(rnd.gauss(mu, sd), 3) for m, (mu, sd) in DEVICE_TYPES[dtype].items()}
                reading = {"site": site, "zone": zone, "device_id": device_id, "device_type": dtype, "ts": time.time(),
                           "seq": seq[device_id], "metrics": metrics}
                if n % 200 == 0:
                    await producer.send(self.settings.topic_sensor_readings, b'{"device_id": "' + device_id.encode() + b'", "temp": NaN}', key=device_id.encode())
                    self.sent["malformed"] += 1
                else:
                    await producer.send(self.settings.topic_sensor_readings, codec.dumps(reading), key=device_id.encode())
                    self.sent["readings"] += 1
                if n % 4 == 0:
                    user = f"user-{rnd.randrange(50)}"
                    click = {"event_id": f"demo-{time.time_ns()}", "user_id": user, "session_id": f"{user}-s", "item_id": f"item-{rnd.randrange(200)}",
                             "action": rnd.choice(["view", "view", "view", "add_to_cart", "purchase"]), "price": round(rnd.uniform(5, 90), 2), "ts": time.time()}
                    await producer.send(self.settings.topic_clicks, codec.dumps(click), key=user.encode())
                    self.sent["clicks"] += 1
                try:
                    await asyncio.wait_for(stop.wait(), timeout=1.0 / self.rate)
                except TimeoutError:
                    pass
            await producer.flush()
        finally:
            await producer.stop()


def _stats(settings: Settings) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://{settings.web_host}:{settings.web_port}/stats", timeout=5) as r:
            return json.loads(r.read())
    except OSError:
        return None


def run(settings: Settings, duration: float | None, rate: float, console: Console) -> int:
    started = time.monotonic()
    console.print("[bold]Wharf demo[/bold]: starting Kafka and Mosquitto ...")
    for st in infra.up(settings, infra.default_services(settings)):
        console.print(f"  [green]✓[/green] {st.name:<10} {st.where}", soft_wrap=True)
    log = settings.state_dir / "worker.log"
    console.print(f"starting a Faust worker (log: {log}) ...", soft_wrap=True)
    worker = subprocess.Popen([sys.executable, "-m", "wharf.cli", "worker", "--loglevel", "warning"],
                              stdout=open(log, "ab"), stderr=subprocess.STDOUT, env={**os.environ, **settings.env()}, start_new_session=True)
    try:
        while _stats(settings) is None:
            if worker.poll() is not None:
                console.print(f"[red]worker exited with {worker.returncode}[/red]; see {log}")
                return 1
            time.sleep(0.5)
        console.print(f"ready in {time.monotonic() - started:.1f}s.")
        console.print(f"  worker stats:  http://{settings.web_host}:{settings.web_port}/stats", soft_wrap=True)
        console.print(f"  topics:        {settings.topic_sensor_readings}, {settings.topic_clicks}, {settings.topic_dead_letters}", soft_wrap=True)
        console.print(f"  ClickHouse:    {settings.clickhouse_url} (tables sensor_readings, clicks, dead_letters; views sensor_minute, clicks_minute)", soft_wrap=True)
        console.print("  stop with Ctrl-C (the data stays in the state folder)\n")
        return asyncio.run(_loop(settings, duration, rate, console, worker))
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
        console.print("worker stopped; stopping the servers ...")
        infra.down(settings)
        console.print(f"stopped. State kept in {settings.state_dir}.", soft_wrap=True)


async def _loop(settings: Settings, duration: float | None, rate: float, console: Console, worker: subprocess.Popen) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    producer = Producer(settings, rate)
    task = asyncio.create_task(producer.run(stop))
    t0 = time.monotonic()
    last = (t0, 0)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=2.0)
        except TimeoutError:
            pass
        if duration is not None and time.monotonic() - t0 >= duration:
            stop.set()
        if worker.poll() is not None:
            console.print(f"[red]worker exited with {worker.returncode}[/red]")
            stop.set()
            break
        s = await asyncio.to_thread(_stats, settings) or {}
        tables = s.get("tables", {})
        stored = tables.get("sensor_readings", 0)
        now = time.monotonic()
        per_s = (stored - last[1]) / max(now - last[0], 1e-6)
        last = (now, stored)
        errors = [w.get("last_error") for w in s.get("writers", {}).values() if w.get("last_error")]
        console.print(
            f"sent {producer.sent['readings']} readings / {producer.sent['clicks']} clicks / {producer.sent['malformed']} malformed"
            f" | in ClickHouse: {stored} readings ({per_s:.0f}/s), {tables.get('clicks', 0)} clicks, {tables.get('dead_letters', 0)} dead letters"
            + (f" | last error: {errors[-1]}" if errors else ""),
            soft_wrap=True,
        )
    await task
    return 0
