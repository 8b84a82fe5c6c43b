"""The simulated warehouse on the wire: one authenticated MQTT client per device, in real time.

Each device logs in with its own credentials, announces itself (birth, retained)
and leaves a last will (`offline`) with the broker, then publishes its readings
at QoS 1 on `wharf/{site}/{zone}/{device_id}/telemetry`, paced to the wall clock
(`speed` > 1 compresses time). Injected faults are written to `truth_file` as
JSON lines when they start: the ground truth for detection delay and hits/misses.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt

from mqtt_bridge.topics import status_topic, telemetry_topic
from schemas import codec
from wharf.settings import Settings
from wharf.simulator.warehouse import Device, WarehouseSimulator


@dataclass
class FleetStats:
    published: Counter = field(default_factory=Counter)
    faults_started: int = 0
    connect_failures: int = 0


class DeviceFleet:
    def __init__(self, settings: Settings, sim: WarehouseSimulator, speed: float = 1.0, truth_file: Path | None = None):
        self.settings = settings
        self.sim = sim
        self.speed = speed
        self.truth_file = truth_file
        self.stats = FleetStats()
        self.clients: dict[str, mqtt.Client] = {}
        self._stop = threading.Event()

    def _client(self, d: Device) -> mqtt.Client:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sim-{d.device_id}", protocol=mqtt.MQTTv311, clean_session=True)
        c.username_pw_set(d.device_id, d.password)
        offline = {"site": d.site, "zone": d.zone, "device_id": d.device_id, "device_type": d.device_type, "ts": time.time(), "state": "offline"}
        c.will_set(status_topic(d.site, d.zone, d.device_id), codec.dumps(offline), qos=1, retain=True)
        c.max_inflight_messages_set(100)
        c.max_queued_messages_set(0)
        connected = threading.Event()
        c.on_connect = lambda client, userdata, flags, rc, props: connected.set() if not rc.is_failure else None
        c.connect(self.settings.mqtt_host, self.settings.mqtt_port, keepalive=15)
        c.loop_start()
        if not connected.wait(10):
            self.stats.connect_failures += 1
            raise ConnectionError(f"device {d.device_id} could not log in to MQTT (is it in WHARF_MQTT_DEVICES?)")
        return c

    def connect(self) -> None:
        for d in self.sim.devices:
            self.clients[d.device_id] = self._client(d)
        for pub in self.sim.births():
            d = pub.device
            self.clients[d.device_id].publish(status_topic(d.site, d.zone, d.device_id), pub.payload, qos=1, retain=True)

    def run(self, duration_s: float | None = None) -> FleetStats:
        """Publish in real time until `duration_s` of wall time passed or `stop()` is called."""
        wall0 = time.time()
        sim0 = self.sim.config.start_ts
        known_faults = 0
        truth = open(self.truth_file, "a") if self.truth_file else None
        try:
            while not self._stop.is_set():
                elapsed = time.time() - wall0
                if duration_s is not None and elapsed >= duration_s:
                    break
                horizon = sim0 + elapsed * self.speed
                for pub in self.sim.readings(horizon):
                    if pub.kind == "silent":
                        self.stats.published["silent"] += 1
                        continue
                    d = pub.device
                    self.clients[d.device_id].publish(telemetry_topic(d.site, d.zone, d.device_id), pub.payload, qos=1)
                    self.stats.published[pub.kind] += 1
                started = self.sim.faults_until(horizon)
                for fault in started[known_faults:]:
                    if truth:
                        truth.write(json.dumps(fault.as_dict()) + "\n")
                        truth.flush()
                known_faults = len(started)
                self.stats.faults_started = known_faults
                self._stop.wait(0.05)
        finally:
            if truth:
                truth.close()
        return self.stats

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        for c in self.clients.values():
            c.disconnect()  # a clean disconnect: no last will
            c.loop_stop()
