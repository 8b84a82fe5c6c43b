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
    elif kind == "compressor_failure":  # a slow drift: a fraction of a degree a minute, not a step
        t, v = np.array(during_vals).T
        slope = np.polyfit(t - t[0], v, 1)[0] * 60.0
        assert 0.7 * sim.config.compressor_drift_c_per_min < slope < 1.3 * sim.config.compressor_drift_c_per_min, slope
    else:
        base = np.median([v for _, v in before])
        peak = max(v for _, v in during_vals)
        assert peak > base + 3, (kind, base, peak)
    assert sim.faults_until(t0 + 600) == [fault]


def test_a_second_stuck_fault_on_a_device_freezes_its_value_too():
    """An ended stuck fault once thawed every later one on the same device (each reading got a fresh value)."""
    sim = WarehouseSimulator(WarehouseConfig(fault_every_s=0))
    device = next(d for d in sim.devices if d.device_type == "forklift")
    t0 = sim.config.start_ts
    first, second = (sim.inject("stuck", device.device_id, t0 + s, 60) for s in (100, 300))
    series = metric_series(list(sim.readings(t0 + 420)), device.device_id, "battery")
    for f in (first, second):
        during = [v for ts, v in series if f.active(ts)]
        assert len(during) > 50 and len(set(during)) == 1
    assert len({v for ts, v in series if second.end_ts <= ts}) > 10  # and it thaws after


def test_scheduled_faults_rotate_through_every_kind():
    sim, _ = run(seconds=900, fault_every_s=60, first_fault_after_s=30)
    kinds = [f.kind for f in sim.faults_until(sim.config.start_ts + 900)]
    assert set(kinds) == set(FAULT_KINDS)
    assert all(f.kind not in ("compressor_failure", "door_left_open") or f.device_id.startswith("coldroom") for f in sim.faults)


def test_registry_setting_binds_every_device_to_its_site_and_zone():
    from schemas.secrets import Placement, parse_registry

    sim = WarehouseSimulator()
    assert parse_registry(sim.registry_setting(), "test") == {d.device_id: Placement(d.site, d.zone) for d in sim.devices}


@pytest.mark.infra
def test_fleet_logs_in_as_each_device_and_publishes_in_real_time(settings, tmp_path):
    """Against a real Mosquitto of its own (the devices need their own credentials)."""
    import queue
    import threading

    import paho.mqtt.client as mqtt

    from pydantic import SecretStr

    from wharf.infra.mosquitto import Mosquitto
    from schemas.secrets import ensure_secrets
    from wharf.simulator.devices import DeviceFleet

    sim = WarehouseSimulator(WarehouseConfig(sites=1, zones_per_site=1, devices_per_zone=4, interval_s=0.5,
                                             start_ts=__import__("time").time(), fault_every_s=0))
    # Its own broker and state folder: `ensure_secrets` generates the devices' passwords from the registry.
    s = settings.model_copy(update={"state_dir": tmp_path, "mqtt_port": settings.mqtt_port + 100, "mqtt_bridge_port": settings.mqtt_bridge_port + 100,
                                    "mqtt_tls_port": settings.mqtt_tls_port + 100, "mqtt_devices": SecretStr(""),
                                    "mqtt_device_registry": sim.registry_setting()})
    ensure_secrets(s)
    broker = Mosquitto(s)
    broker.start()
    got: queue.Queue = queue.Queue()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fleet-test-bridge", protocol=mqtt.MQTTv311)
    sub.username_pw_set(s.mqtt_bridge_user, s.bridge_password())
    ready = threading.Event()
    sub.on_connect = lambda c, *a: (c.subscribe([("wharf/+/+/+/telemetry", 1), ("wharf/+/+/+/status", 1)]), ready.set())
    sub.on_message = lambda c, u, m: got.put((m.topic, m.payload))
    sub.connect(s.mqtt_host, s.mqtt_bridge_port)
    sub.loop_start()
    fleet = DeviceFleet(s, sim, truth_file=tmp_path / "truth.jsonl")
    try:
        assert ready.wait(10)
        fleet.connect()
        stats = fleet.run(duration_s=3)
        __import__("time").sleep(0.5)
        messages = []
        while not got.empty():
            messages.append(got.get())
        telemetry = [parse(p, SensorReading) for t, p in messages if t.endswith("/telemetry")]
        births = [t for t, p in messages if t.endswith("/status") and b'"online"' in p]
        assert len(births) == 4
        assert {r.device_id for r in telemetry} == {d.device_id for d in sim.devices}
        assert 16 <= len(telemetry) == stats.published["telemetry"] <= 32  # ~2 per second per device
    finally:
        fleet.close()
        sub.disconnect()
        sub.loop_stop()
        broker.stop()


def test_scheduled_faults_one_at_a_time_and_a_compressor_fails_once():
    sim = WarehouseSimulator(WarehouseConfig(fault_every_s=60, first_fault_after_s=60))
    list(sim.readings(sim.config.start_ts + 4 * 3600))
    failures = [f for f in sim.faults if f.kind == "compressor_failure"]
    cold_rooms = [d for d in sim.devices if d.device_type == "cold_room"]
    assert len(failures) == len(cold_rooms) == len({f.device_id for f in failures})
    for f in failures:
        assert f.end_ts - f.start_ts == sim.config.compressor_duration_s
    for d in sim.devices:  # scheduled faults of one device never overlap while another device is free
        mine = sorted((f for f in sim.faults if f.device_id == d.device_id), key=lambda f: f.start_ts)
        overlaps = [(a, b) for a, b in zip(mine, mine[1:]) if b.start_ts < a.end_ts]
        for _, b in overlaps:
            eligible = cold_rooms if b.kind in ("compressor_failure", "door_left_open") else sim.devices
            assert all(any(g.active(b.start_ts) for g in sim.faults if g.device_id == e.device_id and g is not b) for e in eligible), b


def test_no_compressor_fails_before_compressor_after_s_and_other_faults_take_its_turns():
    sim = WarehouseSimulator(WarehouseConfig(fault_every_s=60, first_fault_after_s=60, compressor_after_s=1200))
    list(sim.readings(sim.config.start_ts + 2 * 3600))
    start = sim.config.start_ts
    early = [f for f in sim.faults if f.start_ts < start + 1200]
    assert early and all(f.kind != "compressor_failure" for f in early)
    assert any(f.kind == "compressor_failure" for f in sim.faults if f.start_ts >= start + 1200)
