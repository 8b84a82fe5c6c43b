"""`wharf bench bridge`: the bridge alone, measured against Mosquitto's own publishing rate.

Publishers are Mosquitto's C client (`mosquitto_pub -l`, QoS 1), so they are not the limit; the
bridge runs in this process against the real Mosquitto and Kafka on fresh topics. Prints the
publishers' rate (the reference: what Mosquitto accepts) and the bridge's rate: messages received,
confirmed by Kafka and acknowledged to Mosquitto, per second.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid

from mqtt_bridge.bridge import Bridge
from mqtt_bridge.connection import end_session, mosquitto_client_args
from schemas import codec
from wharf.infra.kafka import delete_topics_containing, ensure_topics
from schemas.secrets import device_registry
from schemas.settings import Settings


async def bench_bridge(settings: Settings, messages: int = 30_000, publishers: int = 3) -> str:
    from wharf.bench.devices import publisher_logins

    creds = publisher_logins(settings, publishers)
    u = uuid.uuid4().hex[:6]
    s = settings.model_copy(update={"topic_sensor_readings": f"bench.bridge.{u}.readings", "topic_device_status": f"bench.bridge.{u}.status",
                                    "topic_dead_letters": f"bench.bridge.{u}.dlq"})
    await ensure_topics(s, [s.topic_sensor_readings, s.topic_device_status, s.topic_dead_letters], s.topic_partitions)
    bridge = Bridge(s, client_id=f"bench-bridge-{u}", share_group=f"bench{u}")
    ready = asyncio.Event()
    task = asyncio.create_task(bridge.run(ready))
    await asyncio.wait_for(ready.wait(), 30)
    # Retained status messages of other devices arrive right after subscribing: let them pass first.
    last, quiet_since, give_up = -1, time.monotonic(), time.monotonic() + 10
    while time.monotonic() - quiet_since < 0.5 and time.monotonic() < give_up:
        if bridge.stats.received != last or bridge.stats.in_flight:
            last, quiet_since = bridge.stats.received, time.monotonic()
        await asyncio.sleep(0.05)
    start_received = bridge.stats.acked
    per = messages // len(creds)
    now = time.time()
    site = f"bench{u}"
    registry = device_registry(s)
    places = {user: (site if user not in registry or registry[user].site == "+" else registry[user].site,
                     "z1" if user not in registry or registry[user].zone == "+" else registry[user].zone) for user, _ in creds}
    lines = {user: b"\n".join(codec.dumps({"site": places[user][0], "zone": places[user][1], "device_id": user, "device_type": "cold_room", "ts": now,
                                           "seq": i, "metrics": {"temperature": 4.0}}) for i in range(per)) + b"\n" for user, _ in creds}
    t0 = time.monotonic()
    # The password goes in the environment-free way mosquitto_pub offers (-P); the client id is the user name (the broker's rule).
    procs = [subprocess.Popen(["mosquitto_pub", *mosquitto_client_args(s), "-i", user, "-u", user, "-P", pw, "-q", "1", "-V", "mqttv311",
                               "-t", f"wharf/{places[user][0]}/{places[user][1]}/{user}/telemetry", "-l"], stdin=subprocess.PIPE)
             for user, pw in creds]
    for proc, (user, _) in zip(procs, creds, strict=True):
        proc.stdin.write(lines[user])
        proc.stdin.close()
    published_at = None
    target = start_received + per * len(creds)
    while bridge.stats.acked < target and time.monotonic() - t0 < 600:
        await asyncio.sleep(0.02)
        if published_at is None and all(p.poll() is not None for p in procs):
            published_at = time.monotonic() - t0
    took = time.monotonic() - t0
    done = bridge.stats.acked - start_received
    bridge.stop()
    await task
    await asyncio.to_thread(end_session, s, bridge.client_id)  # else Mosquitto queues all later telemetry for it
    await delete_topics_containing(s, f"bench.bridge.{u}.")
    pub = f"{per * len(creds) / published_at:,.0f} msgs/s" if published_at else "not finished"
    return (f"publishers        {len(creds)} x mosquitto_pub, QoS 1, {per * len(creds):,} messages: {pub} into Mosquitto (reference)\n"
            f"bridge            {done:,} received, confirmed by Kafka (acks=all) and acked in {took:.1f}s: {done / took:,.0f} msgs/s\n"
            f"                  {bridge.stats.line()}")
