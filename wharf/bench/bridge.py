"""`wharf bench bridge`: the bridge's rate beside Mosquitto's own intake, measured in the same run.

Publishers are Mosquitto's C client (`mosquitto_pub -l`, QoS 1, one device login each: `publishers.py`
provisions what the settings lack), so they are not the limit. The bridge is `wharf bridge` itself, with
`--processes` processes (`mqtt_bridge/processes.py`), against the real Mosquitto and Kafka on fresh topics, in
fresh persistent sessions that are ended afterwards; the bench reads their counters from their `/metrics`.
Printed: Mosquitto's intake (messages / time until every publisher had its last PUBACK from the broker), the
bridge's rate (messages / time until every one was confirmed by Kafka and acked to Mosquitto), and their
ratio. Issue 21's target is a ratio of at least 80 %.
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from wharf.infra.sessions import end_temporary, open_temporary
from mqtt_bridge.processes import BridgeProcesses, client_ids
from schemas import codec
from schemas.settings import Settings
from wharf.bench.publishers import Publisher, provisioned
from wharf.infra.kafka import delete_topics_containing, ensure_topics

_SAMPLE = re.compile(rb"^wharf_bridge_(\w+?)(?:_total)? ([0-9.e+]+)$", re.M)


def _free_ports(n: int) -> int:
    """The first of `n` consecutive free loopback ports."""
    for _ in range(100):
        base = random.randrange(20_000, 60_000 - n)
        socks = []
        try:
            for port in range(base, base + n):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no {n} consecutive free ports")


class _Counters:
    """The bridge processes' counters, summed, read from their `/metrics` (None while one does not answer yet)."""

    def __init__(self, port: int, n: int):
        self.urls = [f"http://127.0.0.1:{port + i}/metrics" for i in range(n)]

    def _read(self) -> dict[str, float] | None:
        total: dict[str, float] = {}
        for url in self.urls:
            try:
                with urllib.request.urlopen(url, timeout=2) as reply:
                    text = reply.read()
            except OSError:
                return None
            for name, value in _SAMPLE.findall(text):
                total[name.decode()] = total.get(name.decode(), 0.0) + float(value)
        total["acked"] = total.get("received", 0.0) - total.get("in_flight", 0.0)
        return total

    async def read(self) -> dict[str, float] | None:
        return await asyncio.to_thread(self._read)


def _line(c: dict[str, float]) -> str:
    return "  ".join(f"{k.replace('_', ' ')} {c.get(k, 0):.0f}" for k in
                     ("received", "forwarded", "dead_lettered", "in_flight", "kafka_retries", "mqtt_connects"))


async def _ready(counters: _Counters, processes: BridgeProcesses, n: int, most: float = 60.0) -> None:
    """Every process connected, then a quiet half second: what the broker delivers right after subscribing (other
    devices' live telemetry) passes first."""
    deadline = time.monotonic() + most
    last, quiet_since = None, time.monotonic()
    while time.monotonic() < deadline:
        if any(c.proc.poll() is not None for c in processes.children):
            raise RuntimeError("a bridge process exited while starting")
        c = await counters.read()
        if c is None or c.get("mqtt_connects", 0) < n:
            quiet_since = time.monotonic()
        elif (c["received"], c["in_flight"]) != last or c["in_flight"]:
            last, quiet_since = (c["received"], c["in_flight"]), time.monotonic()
        elif time.monotonic() - quiet_since >= 0.5:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the bridge processes were not connected and quiet within {most:.0f} s")


# `mosquitto_pub -l` fed from a file queues lines faster than PUBACKs come back; past 65,535 outstanding packet ids
# it disconnects with messages unsent (exit code 0): with 75,000 a publisher the bridge got ~75,800 of 600,000.
MOST_PER_PUBLISHER = 60_000


def _lines(p: Publisher, count: int, now: float) -> bytes:
    return b"\n".join(codec.dumps({"site": p.site, "zone": p.zone, "device_id": p.user, "device_type": "cold_room", "ts": now,
                                   "seq": i, "metrics": {"temperature": 4.0}}) for i in range(count)) + b"\n"


async def _run(s: Settings, pubs: list[Publisher], per: int, counters: _Counters, folder: Path) -> tuple[float, float, int]:
    """Publish `per` messages from each publisher; returns (intake seconds, bridge seconds, messages acked)."""
    files = []
    for p in pubs:  # from files, not pipes: feeding pipes from here would pace the publishers by this process
        files.append(folder / f"{p.user}.jsonl")
        files[-1].write_bytes(_lines(p, per, time.time()))
    start = (await counters.read())["acked"]
    t0 = time.monotonic()
    procs = []
    for p, path in zip(pubs, files, strict=True):
        with open(path, "rb") as lines:
            procs.append(subprocess.Popen(p.mosquitto_pub(s), stdin=lines, stderr=subprocess.PIPE))
    intake: list[float] = []

    async def watch_publishers() -> None:  # on its own, so that the scrapes below do not delay the intake's end
        while any(proc.poll() is None for proc in procs):
            await asyncio.sleep(0.005)
        intake.append(time.monotonic() - t0)

    watcher = asyncio.create_task(watch_publishers())
    acked, took, target = 0.0, 0.0, per * len(pubs)
    while acked < target and time.monotonic() - t0 < 600:
        if watcher.done() and any(proc.returncode for proc in procs):
            break  # reported below
        # Each scrape costs the bridges a thread and the GIL for a while: scrape seldom while far from the end, then
        # every 20 ms (a quarter of the time the rest should take at the mean rate so far, within those bounds).
        rate = acked / took if took > 0 else 0.0
        await asyncio.sleep(min(0.2, max(0.02, (target - acked) / rate / 4)) if rate else 0.04)
        c = await counters.read()
        took = time.monotonic() - t0  # after the scrape: a count is never credited earlier than it was read
        acked = c["acked"] - start if c is not None else acked
    await asyncio.wait_for(watcher, 600)
    failed = [(p.user, proc.returncode, proc.stderr.read().decode(errors="replace")[-300:])
              for p, proc in zip(pubs, procs, strict=True) if proc.returncode]
    if failed:  # loudly: a publisher that could not publish would make the reference meaningless
        raise RuntimeError(f"mosquitto_pub failed: {failed}")
    for proc in procs:
        proc.stderr.close()
    return intake[0], took, int(acked)


async def bench_bridge(settings: Settings, messages: int = 100_000, publishers: int = 8, processes: int = 1) -> str:
    u = uuid.uuid4().hex[:6]
    s = settings.model_copy(update={"topic_sensor_readings": f"bench.bridge.{u}.readings", "topic_device_status": f"bench.bridge.{u}.status",
                                    "topic_dead_letters": f"bench.bridge.{u}.dlq"})
    per = messages // publishers
    if per < 1:
        raise ValueError(f"{messages} messages cannot be shared by {publishers} publishers")
    if per > MOST_PER_PUBLISHER:
        raise ValueError(f"--messages {messages} gives each of {publishers} publishers {per:,} messages; at most "
                         f"{MOST_PER_PUBLISHER:,} each (MQTT's 16-bit packet ids: past them `mosquitto_pub -l` drops its "
                         f"connection with messages unsent): raise --publishers")
    port = _free_ports(processes)
    env = {"WHARF_TOPIC_SENSOR_READINGS": s.topic_sensor_readings, "WHARF_TOPIC_DEVICE_STATUS": s.topic_device_status,
           "WHARF_TOPIC_DEAD_LETTERS": s.topic_dead_letters, "WHARF_BRIDGE_METRICS_HOST": "127.0.0.1"}
    with provisioned(s, publishers, f"bench{u}") as pubs, tempfile.TemporaryDirectory(prefix="wharf-bench-bridge-") as tmp:
        folder = Path(tmp)
        await ensure_topics(s, [s.topic_sensor_readings, s.topic_device_status, s.topic_dead_letters], s.topic_partitions)
        counters = _Counters(port, processes)
        with open(folder / "bridge.log", "wb") as out:
            open_temporary(s, client_ids(f"bench-bridge-{u}", processes))
            bridges = BridgeProcesses(f"bench-bridge-{u}", f"bench{u}", processes, "warning", metrics_port=port, env=env, output=out).start()
            try:
                await _ready(counters, bridges, processes)
                intake, took, done = await _run(s, pubs, per, counters, folder)
                final = await counters.read() or {}
            except BaseException:
                print((folder / "bridge.log").read_text(errors="replace")[-3000:])
                raise
            finally:
                await asyncio.to_thread(bridges.stop)
                await asyncio.to_thread(end_temporary, s, bridges.client_ids)  # else Mosquitto queues all later telemetry for them
                await delete_topics_containing(s, f"bench.bridge.{u}.")
    total = per * len(pubs)
    if done < total:
        raise RuntimeError(f"the bridge acked {done:,} of {total:,} messages within 600 s")
    mosquitto_rate, bridge_rate = total / intake, done / took
    return (f"publishers        {len(pubs)} x mosquitto_pub (one device login each), QoS 1, {total:,} messages\n"
            f"mosquitto intake  {mosquitto_rate:,.0f} msgs/s (all publishers done in {intake:.2f}s; the same-run reference)\n"
            f"bridge            {done:,} received, confirmed by Kafka (acks=all) and acked in {took:.2f}s: {bridge_rate:,.0f} msgs/s "
            f"({processes} `wharf bridge` process{'es' if processes > 1 else ''})\n"
            f"ratio             {bridge_rate / mosquitto_rate:.0%} of Mosquitto's intake (target >= 80%)\n"
            f"                  {_line(final)}")
