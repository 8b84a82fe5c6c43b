"""The bridge's counters: kept by `Bridge`, logged by `run_bridge`, served to Prometheus by `mqtt_bridge.metrics`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class BridgeStats:
    received: int = 0
    forwarded: int = 0
    dead_lettered: int = 0
    acked: int = 0
    kafka_retries: int = 0
    mqtt_connects: int = 0
    started: float = field(default_factory=time.time)

    @property
    def in_flight(self) -> int:
        return self.received - self.acked

    def line(self) -> str:
        return (f"received {self.received}  forwarded {self.forwarded}  dead-lettered {self.dead_lettered}  "
                f"in flight {self.in_flight}  kafka retries {self.kafka_retries}  mqtt connects {self.mqtt_connects}")
