"""Warehouse telemetry simulator: devices of several types, their physics, and injected faults.

Deterministic for a given `WarehouseConfig` (one seeded NumPy generator; times
are simulated, starting at `start_ts`). `readings(until)` yields what each device
would publish, in time order, as `Publication`s: telemetry payloads (valid
`SensorReading` JSON, or deliberately malformed bytes during a malformed-burst
fault), birth messages, and the moments a device goes silent. The MQTT side
(one authenticated client per device, last will, real-time pacing) lives in
`wharf.simulator.devices`; keeping the physics here makes it testable without a broker.

Device models (per reading interval, with ±10 % jitter and a fixed clock skew per device):
- cold_room: temperature around its setpoint (4 °C) with a small daily cycle and
  brief door openings; humidity around 60 %.
- conveyor: vibration RMS around 0.3 g; motor temperature around 45 °C.
- forklift: battery discharges while working and recharges below 20 %.
- dock_door: open (0/1) on a shift schedule; ambient temperature.

Faults (`Fault`), on a schedule or added on demand, are the ground truth the demo
compares detections against: compressor_failure (slow drift up), door_left_open
(step up), stuck (value frozen), spikes (isolated outliers), silent (stops
publishing), malformed_burst (invalid payloads).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from schemas import codec

DEVICE_TYPES = ("cold_room", "conveyor", "forklift", "dock_door")
FAULT_KINDS = ("compressor_failure", "door_left_open", "stuck", "spikes", "silent", "malformed_burst")
FAULT_TARGET = {  # which metric a fault acts on, per device type
    "cold_room": "temperature",
    "conveyor": "vibration",
    "forklift": "battery",
    "dock_door": "temperature",
}


@dataclass(frozen=True)
class Device:
    site: str
    zone: str
    device_id: str
    device_type: str
    interval_s: float
    skew_s: float



@dataclass(frozen=True)
class Fault:
    kind: str
    device_id: str
    start_ts: float
    end_ts: float
    metric: str
    magnitude: float = 0.0

    def active(self, ts: float) -> bool:
        return self.start_ts <= ts < self.end_ts

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class WarehouseConfig:
    seed: int = 7
    sites: int = 2
    zones_per_site: int = 2
    devices_per_zone: int = 4
    interval_s: float = 1.0
    start_ts: float = 1_735_689_600.0  # 2025-01-01T00:00:00Z
    fault_every_s: float = 120.0
    """Mean gap between scheduled faults (0: no schedule, faults only on demand)."""
    fault_duration_s: float = 60.0
    """How long a scheduled fault lasts, except a compressor failure (below)."""
    first_fault_after_s: float = 90.0
    compressor_drift_c_per_min: float = 0.25
    """A failing compressor warms its room by a fraction of a degree a minute: the 8 °C rule fires after ~15 min."""
    compressor_duration_s: float = 1800.0
    compressor_after_s: float = 0.0
    """No scheduled compressor failure before this long after the start (another fault takes its turn): no model
    can tell a drift from the room's normal before it has learned that normal."""
    device_prefix: str = ""
    """Put before every device id: a benchmark's fleet beside a running demo's (same ids would log each other out)."""


@dataclass(frozen=True)
class Publication:
    ts: float
    device: Device
    kind: str  # "telemetry" | "birth" | "silent" | "malformed"
    payload: bytes


@dataclass
class _DeviceState:
    seq: int = 0
    next_ts: float = 0.0
    battery: float = 80.0
    charging: bool = False
    door_until: float = 0.0
    stuck: dict[str, float] = field(default_factory=dict)


class WarehouseSimulator:
    def __init__(self, config: WarehouseConfig | None = None):
        self.config = cfg = config or WarehouseConfig()
        self.rng = np.random.default_rng(cfg.seed)
        self.devices: list[Device] = []
        for s in range(cfg.sites):
            for z in range(cfg.zones_per_site):
                for d in range(cfg.devices_per_zone):
                    dtype = DEVICE_TYPES[(z * cfg.devices_per_zone + d) % len(DEVICE_TYPES)]
                    n = len(self.devices)
                    self.devices.append(Device(
                        site=f"site-{s + 1}", zone=f"zone-{s + 1}{chr(ord('a') + z)}", device_id=f"{cfg.device_prefix}{dtype.replace('_', '')}-{n + 1:03d}",
                        device_type=dtype, interval_s=cfg.interval_s, skew_s=float(self.rng.normal(0, 0.5)),
                    ))
        self.state = {d.device_id: _DeviceState(next_ts=cfg.start_ts + float(self.rng.uniform(0, cfg.interval_s))) for d in self.devices}
        self.faults: list[Fault] = []
        self._by_device: dict[str, list[Fault]] = {d.device_id: [] for d in self.devices}
        self._next_fault_ts = cfg.start_ts + cfg.first_fault_after_s if cfg.fault_every_s > 0 else math.inf
        self._fault_no = 0

    def _schedule_until(self, ts: float) -> None:
        """Faults are drawn lazily, in time order, so the schedule costs nothing ahead of the stream."""
        while self._next_fault_ts <= ts:
            kind = FAULT_KINDS[self._fault_no % len(FAULT_KINDS)]
            eligible = [d for d in self.devices if d.device_type == "cold_room"] if kind in ("compressor_failure", "door_left_open") else self.devices
            # one scheduled fault at a time per device, so the ground truth says which fault an alarm belongs to
            idle = [d for d in eligible if not any(f.end_ts > self._next_fault_ts for f in self._by_device[d.device_id])]
            pool = idle or eligible
            if kind == "compressor_failure":  # a unit fails once and is then repaired, not every hour
                pool = [d for d in pool if not any(f.kind == kind for f in self._by_device[d.device_id])]
                if self._next_fault_ts < self.config.start_ts + self.config.compressor_after_s:
                    pool = []
                if not pool:
                    self._fault_no += 1
                    continue
            device = pool[int(self.rng.integers(len(pool)))]
            duration = self.config.compressor_duration_s if kind == "compressor_failure" else self.config.fault_duration_s
            self.inject(kind, device.device_id, self._next_fault_ts, duration)
            self._next_fault_ts += self.config.fault_every_s * float(self.rng.uniform(0.7, 1.3))
            self._fault_no += 1

    def inject(self, kind: str, device_id: str, start_ts: float, duration_s: float) -> Fault:
        """Add a fault (on demand); returns it as ground truth."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; choose from {FAULT_KINDS}")
        device = next(d for d in self.devices if d.device_id == device_id)
        magnitude = {"compressor_failure": self.config.compressor_drift_c_per_min / 60.0,  # per second
                     "door_left_open": 6.0, "spikes": 8.0}.get(kind, 0.0)
        fault = Fault(kind, device_id, start_ts, start_ts + duration_s, FAULT_TARGET[device.device_type], magnitude)
        self.faults.append(fault)
        self._by_device[device_id].append(fault)
        return fault

    def faults_until(self, ts: float) -> list[Fault]:
        return [f for f in self.faults if f.start_ts <= ts]

    # --- physics ---------------------------------------------------------------
    def _normal(self, d: Device, st: _DeviceState, ts: float) -> dict[str, float]:
        r = self.rng
        day = math.sin(2 * math.pi * ((ts % 86400) / 86400))
        if d.device_type == "cold_room":
            if st.door_until < ts and r.random() < 0.002:  # a short, normal door opening
                st.door_until = ts + float(r.uniform(10, 40))
            door = 1.2 if ts < st.door_until else 0.0
            return {"temperature": 4.0 + 0.4 * day + door + float(r.normal(0, 0.08)), "humidity": 60.0 + 2 * day + float(r.normal(0, 0.8))}
        if d.device_type == "conveyor":
            return {"vibration": 0.3 + float(r.normal(0, 0.02)), "motor_temp": 45.0 + 3 * day + float(r.normal(0, 0.3))}
        if d.device_type == "forklift":
            if st.charging:
                st.battery = min(100.0, st.battery + 0.05 * d.interval_s)
                st.charging = st.battery < 95.0
            else:
                st.battery -= 0.01 * d.interval_s * float(r.uniform(0.5, 1.5))
                st.charging = st.battery < 20.0
            return {"battery": st.battery + float(r.normal(0, 0.05)), "load_kg": float(max(0.0, r.normal(400, 150)))}
        hour = (ts % 86400) / 3600
        open_ = 1.0 if 6 <= hour < 22 and r.random() < 0.3 else 0.0
        return {"open": open_, "temperature": 12.0 + 5 * day + 2 * open_ + float(r.normal(0, 0.2))}

    def _apply_faults(self, d: Device, st: _DeviceState, ts: float, metrics: dict[str, float]) -> str:
        kind = "telemetry"
        faults = self._by_device[d.device_id]
        if st.stuck:  # a frozen value lasts while a stuck fault on its metric does (an ended one must not thaw a later one)
            frozen = {f.metric for f in faults if f.kind == "stuck" and f.active(ts)}
            st.stuck = {m: v for m, v in st.stuck.items() if m in frozen}
        for f in faults:
            if not f.active(ts):
                continue
            elapsed = ts - f.start_ts
            if f.kind == "compressor_failure":
                metrics[f.metric] += f.magnitude * elapsed
            elif f.kind == "door_left_open":
                metrics[f.metric] += f.magnitude
            elif f.kind == "stuck":
                metrics[f.metric] = st.stuck.setdefault(f.metric, round(metrics[f.metric], 3))
            elif f.kind == "spikes" and self.rng.random() < 0.15:
                metrics[f.metric] += f.magnitude * (1 + abs(metrics[f.metric]) * 0.1)
            elif f.kind == "silent":
                kind = "silent"
            elif f.kind == "malformed_burst":
                kind = "malformed"
        return kind

    def _payload(self, d: Device, st: _DeviceState, ts: float, metrics: dict[str, float], kind: str) -> bytes:
        if kind == "malformed":
            variants = (
                b'{"device_id": "' + d.device_id.encode() + b'", "metrics": {"temperature": NaN}}',
                b"\x00\x01garbage",
                codec.dumps({"site": d.site, "zone": d.zone, "device_id": d.device_id, "device_type": d.device_type,
                             "ts": ts, "seq": st.seq, "metrics": {k: str(v) for k, v in metrics.items()}}),
            )
            return variants[st.seq % len(variants)]
        return codec.dumps({"v": 1, "site": d.site, "zone": d.zone, "device_id": d.device_id, "device_type": d.device_type,
                            "ts": round(ts + d.skew_s, 3), "seq": st.seq, "metrics": {k: round(v, 4) for k, v in metrics.items()}})

    # --- the stream ------------------------------------------------------------
    def births(self) -> list[Publication]:
        return [Publication(self.config.start_ts, d, "birth", codec.dumps({
            "site": d.site, "zone": d.zone, "device_id": d.device_id, "device_type": d.device_type,
            "ts": self.config.start_ts, "state": "online", "interval_s": d.interval_s})) for d in self.devices]

    def readings(self, until_ts: float) -> Iterator[Publication]:
        """Everything the devices publish up to `until_ts` (simulated), in time order; resumable."""
        heap = [(self.state[d.device_id].next_ts, i) for i, d in enumerate(self.devices)]
        heapq.heapify(heap)
        while heap and heap[0][0] < until_ts:
            ts, i = heapq.heappop(heap)
            self._schedule_until(ts)
            d = self.devices[i]
            st = self.state[d.device_id]
            metrics = self._normal(d, st, ts)
            kind = self._apply_faults(d, st, ts, metrics)
            st.next_ts = ts + d.interval_s * float(self.rng.uniform(0.9, 1.1))
            heapq.heappush(heap, (st.next_ts, i))
            if kind == "silent":
                yield Publication(ts, d, "silent", b"")
                continue
            st.seq += 1
            yield Publication(ts, d, kind, self._payload(d, st, ts, metrics, kind))

    def registry_setting(self) -> str:
        """The `WHARF_MQTT_DEVICE_REGISTRY` value that binds these devices to their sites and zones."""
        return ",".join(f"{d.device_id}={d.site}/{d.zone}" for d in self.devices)
