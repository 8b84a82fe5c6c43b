"""`wharf bench bridge`: the bridge's rate beside Mosquitto's own intake, measured in the same run.

Publishers are Mosquitto's C client (`mosquitto_pub -l`, QoS 1, one device login each: `publishers.py`
provisions what the settings lack), so they are not the limit. The bridge runs in this process against the
real Mosquitto and Kafka on fresh topics, with a fresh persistent session that is ended afterwards. Printed:
Mosquitto's intake (messages / time until every publisher had its last PUBACK from the broker), the bridge's
rate (messages / time until every one was confirmed by Kafka and acked to Mosquitto), and their ratio.
Issue 21's target is a ratio of at least 80 %.
"""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from mqtt_bridge.bridge import Bridge
from mqtt_bridge.connection import end_session, mosquitto_client_args
from schemas import codec
from schemas.settings import Settings
from wharf.bench.publishers import Publisher, provisioned
from wharf.infra.kafka import delete_topics_containing, ensure_topics


async def _quiet(bridge: Bridge, most: float = 10.0) -> None:
    """Let what the broker delivers right after subscribing (other devices' live telemetry) pass first."""
    last, quiet_since, give_up = -1, time.monotonic(), time.monotonic() + most
    while time.monotonic() - quiet_since < 0.5 and time.monotonic() < give_up:
        if bridge.stats.received != last or bridge.stats.in_flight:
            last, quiet_since = bridge.stats.received, time.monotonic()
        await asyncio.sleep(0.05)


def _lines(p: Publisher, count: int, now: float) -> bytes:
    return b"\n".join(codec.dumps({"site": p.site, "zone": p.zone, "device_id": p.user, "device_type": "cold_room", "ts": now,
                                   "seq": i, "metrics": {"temperature": 4.0}}) for i in range(count)) + b"\n"


async def _run(s: Settings, pubs: list[Publisher], per: int, bridge: Bridge, folder: Path) -> tuple[float, float, int]:
    """Publish `per` messages from each publisher; returns (intake seconds, bridge seconds, messages acked)."""
    files = []
    for p in pubs:  # from files, not pipes: writing a pipe would block this loop, and the bridge in it, until read
        files.append(folder / f"{p.user}.jsonl")
        files[-1].write_bytes(_lines(p, per, time.time()))
    start = bridge.stats.acked
    t0 = time.monotonic()
    # The password goes on the command line (-P): mosquitto_pub reads no password from the environment. The client
    # id is the user name (the broker's rule on device listeners).
    procs = []
    for p, path in zip(pubs, files, strict=True):
        with open(path, "rb") as lines:
            procs.append(subprocess.Popen(["mosquitto_pub", *mosquitto_client_args(s), "-i", p.user, "-u", p.user, "-P", p.password,
                                           "-q", "1", "-V", "mqttv311", "-t", p.topic, "-l"], stdin=lines, stderr=subprocess.PIPE))
    intake = None
    target = start + per * len(pubs)
    while bridge.stats.acked < target and time.monotonic() - t0 < 600:
        await asyncio.sleep(0.01)
        if intake is None and all(p.poll() is not None for p in procs):
            intake = time.monotonic() - t0
            failed = [(p.user, proc.returncode, proc.stderr.read().decode(errors="replace")[-300:])
                      for p, proc in zip(pubs, procs, strict=True) if proc.returncode]
            if failed:  # loudly: a publisher that could not publish would make the reference meaningless
                raise RuntimeError(f"mosquitto_pub failed: {failed}")
    took = time.monotonic() - t0
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    return intake or took, took, bridge.stats.acked - start


async def bench_bridge(settings: Settings, messages: int = 100_000, publishers: int = 8) -> str:
    u = uuid.uuid4().hex[:6]
    s = settings.model_copy(update={"topic_sensor_readings": f"bench.bridge.{u}.readings", "topic_device_status": f"bench.bridge.{u}.status",
                                    "topic_dead_letters": f"bench.bridge.{u}.dlq"})
    per = messages // publishers
    if per < 1:
        raise ValueError(f"{messages} messages cannot be shared by {publishers} publishers")
    with provisioned(s, publishers, f"bench{u}") as pubs:
        await ensure_topics(s, [s.topic_sensor_readings, s.topic_device_status, s.topic_dead_letters], s.topic_partitions)
        bridge = Bridge(s, client_id=f"bench-bridge-{u}", share_group=f"bench{u}")
        ready = asyncio.Event()
        task = asyncio.create_task(bridge.run(ready))
        try:
            await asyncio.wait_for(ready.wait(), 30)
            await _quiet(bridge)
            with tempfile.TemporaryDirectory(prefix="wharf-bench-bridge-") as folder:
                intake, took, done = await _run(s, pubs, per, bridge, Path(folder))
        finally:
            bridge.stop()
            await task
            await asyncio.to_thread(end_session, s, bridge.client_id)  # else Mosquitto queues all later telemetry for it
            await delete_topics_containing(s, f"bench.bridge.{u}.")
    total = per * len(pubs)
    if done < total:
        raise RuntimeError(f"the bridge acked {done:,} of {total:,} messages within 600 s")
    mosquitto_rate, bridge_rate = total / intake, done / took
    return (f"publishers        {len(pubs)} x mosquitto_pub (one device login each), QoS 1, {total:,} messages\n"
            f"mosquitto intake  {mosquitto_rate:,.0f} msgs/s (all publishers done in {intake:.2f}s; the same-run reference)\n"
            f"bridge            {done:,} received, confirmed by Kafka (acks=all) and acked in {took:.2f}s: {bridge_rate:,.0f} msgs/s\n"
            f"ratio             {bridge_rate / mosquitto_rate:.0%} of Mosquitto's intake (target >= 80%)\n"
            f"                  {bridge.stats.line()}")
