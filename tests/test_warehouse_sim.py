"""The warehouse simulator: deterministic, physically plausible, and its faults show in the data."""

import numpy as np
import pytest

from schemas import codec
from schemas.events import SensorReading
from schemas.validation import InvalidEvent, parse
from wharf.simulator.warehouse import FAULT_KINDS, WarehouseConfig, WarehouseSimulator


def run(seed=7, seconds=900, **cfg):
    sim = WarehouseSimulator(WarehouseConfig(seed=seed, **cfg))
    return sim, list(sim.readings(sim.config.start_ts + seconds))


def test_same_seed_same_stream_other_seed_other_stream():
    _, a = run(seed=3, seconds=200)
    _, b = run(seed=3, seconds=200)
    _, c = run(seed=4, seconds=200)
    assert [p.payload for p in a] == [p.payload for p in b]
    assert [p.payload for p in a] != [p.payload for p in c]


def test_readings_are_valid_and_in_time_order_with_per_device_sequence():
    sim, pubs = run(seconds=300, fault_every_s=0)
    assert all(p.kind == "telemetry" for p in pubs)
    assert [p.ts for p in pubs] == sorted(p.ts for p in pubs)
    seqs: dict[str, list[int]] = {}
    for p in pubs:
        r = parse(p.payload, SensorReading)
        seqs.setdefault(r.device_id, []).append(r.seq)
    assert set(seqs) == {d.device_id for d in sim.devices}
    assert all(s == list(range(1, len(s) + 1)) for s in seqs.values())
    assert len({d.device_type for d in sim.devices}) == 4
    temps = [parse(p.payload, SensorReading).metrics["temperature"] for p in pubs if b"cold_room" in p.payload]
    assert 2.5 < np.median(temps) < 5.5  # cold rooms sit near their 4 degree setpoint


def metric_series(pubs, device_id, metric):
    out = []
    for p in pubs:
        if p.device.device_id == device_id and p.kind == "telemetry":
            r = codec.loads(p.payload)
            out.append((p.ts, r["metrics"][metric]))
    return out


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_each_fault_changes_what_the_device_sends(kind):
    sim = WarehouseSimulator(WarehouseConfig(fault_every_s=0))
    device = next(d for d in sim.devices if d.device_type == "cold_room")
    t0 = sim.config.start_ts
    fault = sim.inject(kind, device.device_id, t0 + 300, 120)
    pubs = list(sim.readings(t0 + 600))
    mine = [p for p in pubs if p.device.device_id == device.device_id]
    during = [p for p in mine if fault.active(p.ts)]
    before = metric_series([p for p in mine if p.ts < fault.start_ts], device.device_id, "temperature")
    during_vals = metric_series(during, device.device_id, "temperature")
    if kind == "silent":
        assert during and all(p.kind == "silent" for p in during)
    elif kind == "malformed_burst":
        assert during and all(p.kind == "malformed" for p in during)
        for p in during:
            with pytest.raises(InvalidEvent):
                parse(p.payload, SensorReading)
    elif kind == "stuck":
        assert len({v for _, v in during_vals}) == 1 and len(during_vals) > 50
    else:
        base = np.median([v for _, v in before])
        peak = max(v for _, v in during_vals)
        assert peak > base + 3, (kind, base, peak)
    assert sim.faults_until(t0 + 600) == [fault]


def test_scheduled_faults_rotate_through_every_kind():
    sim, _ = run(seconds=900, fault_every_s=60, first_fault_after_s=30)
    kinds = [f.kind for f in sim.faults_until(sim.config.start_ts + 900)]
    assert set(kinds) == set(FAULT_KINDS)
    assert all(f.kind not in ("compressor_failure", "door_left_open") or f.device_id.startswith("coldroom") for f in sim.faults)


def test_mqtt_credentials_setting_covers_every_device():
    sim = WarehouseSimulator()
    entries = dict(e.split(":") for e in sim.mqtt_devices_setting().split(","))
    assert entries == {d.device_id: d.password for d in sim.devices}
