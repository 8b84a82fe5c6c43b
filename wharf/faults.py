"""`wharf evaluate faults`: the warehouse simulator's injected faults through the sensor path's device step.

In process and in simulated time (no Kafka, no servers): the simulator
(`wharf.simulator.warehouse`) publishes readings, births and silences with fixed
seeds; each valid reading goes through the same step as the `agents.scoring` agent:
`online_models.sensing.score_batch` (all devices' models in one `DeviceBank`, one call
per simulated second, as the agent scores what arrives together), then
`DeviceMonitor.reading` (limit rules, flatline, the model's alarm), and once per
simulated second `DeviceMonitor.check_silence` at the newest event time (the agent's
silence clock while readings flow). Invalid payloads are refused by the same
validation (`schemas.validation.parse`) and reach no model. The alarm events are
scored against the simulator's ground truth by `online_models.evaluation.faults`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from online_models.evaluation.faults import AlarmEvent, FaultReport, TrueFault, format_report, score_faults
from online_models.sensing import SensorSetup, score_batch
from schemas.events import Alert, DeviceStatus, SensorReading
from schemas.validation import InvalidEvent, Limits, parse
from wharf.simulator.warehouse import WarehouseConfig, WarehouseSimulator


WARMUP_S = 1800.0
"""Normal operation before the first scheduled fault: the models have learned their devices, as in production."""


@dataclass
class SeedRun:
    faults: list[TrueFault]
    alarms: list[AlarmEvent]
    readings: int
    refused: int
    device_hours: float


def _event(a: Alert) -> AlarmEvent:
    metric = a.details.get("metric")
    return AlarmEvent(a.ts, a.source_id, a.alarm_type, metric if isinstance(metric, str) else None, a.status, int(a.details["rev"]))


def run_seed(setup: SensorSetup, limits: Limits, seed: int, devices: int, hours: float, fault_every_s: float,
             fault_duration_s: float = 60.0, inject: Iterable[tuple[str, int, float, float]] = (),
             warmup_s: float = 90.0) -> SeedRun:
    """One simulated warehouse of `devices` devices for `hours`, with a fault about every `fault_every_s` (0: none),
    plus the faults in `inject`: (kind, device index, start in seconds after the start, duration in seconds).
    Scheduled faults start after `warmup_s`: a deployed model has history (NAB does not score its first 15 % either)."""
    cfg = WarehouseConfig(seed=seed, sites=1, zones_per_site=1, devices_per_zone=devices, fault_every_s=fault_every_s,
                          fault_duration_s=fault_duration_s, first_fault_after_s=warmup_s)
    sim = WarehouseSimulator(cfg)
    for kind, index, after_s, duration_s in inject:
        sim.inject(kind, sim.devices[index].device_id, cfg.start_ts + after_s, duration_s)
    bank = setup.new_bank()
    monitors = {d.device_id: setup.new_monitor(d.device_id) for d in sim.devices}
    alerts: list[Alert] = []
    for pub in sim.births():  # the agent reads these from the device-status topic
        st = parse(pub.payload, DeviceStatus, limits=limits)
        mon = monitors[st.device_id]
        mon.site, mon.zone, mon.device_type = st.site, st.zone, st.device_type
        alerts += mon.status(st.ts, st.state, st.interval_s)
    pending: dict[str, list[SensorReading]] = defaultdict(list)
    watermark = cfg.start_ts
    readings = refused = 0

    def flush() -> None:
        evs = [ev for device_evs in pending.values() for ev in device_evs]
        scored = score_batch(bank, [e.device_id for e in evs], [e.ts for e in evs], [e.metrics for e in evs])
        for ev, score, is_anom, metric in zip(evs, scored.scores.tolist(), scored.is_anomaly.tolist(), scored.metrics,
                                              strict=True):
            mon = monitors[ev.device_id]
            mon.site, mon.zone, mon.device_type = ev.site, ev.zone, ev.device_type
            alerts.extend(mon.reading(ev.ts, ev.metrics, setup.rules, score, is_anom, metric))
        pending.clear()

    end_ts = cfg.start_ts + hours * 3600.0
    next_tick = math.floor(cfg.start_ts) + 1.0
    for pub in sim.readings(end_ts):
        while pub.ts >= next_tick:
            flush()
            for mon in monitors.values():
                if a := mon.check_silence(watermark):
                    alerts.append(a)
            next_tick += 1.0
        if pub.kind == "silent":
            continue
        try:
            ev = parse(pub.payload, SensorReading, now=pub.ts, limits=limits)
        except InvalidEvent:
            refused += 1
            continue
        readings += 1
        watermark = max(watermark, ev.ts)
        pending[ev.device_id].append(ev)
    flush()
    # readings (and so alarms) carry each device's own clock, skewed from the simulator's: so does the ground truth
    skew = {d.device_id: d.skew_s for d in sim.devices}
    faults = [TrueFault(f.kind, f.device_id, f.metric, f.start_ts + skew[f.device_id], min(f.end_ts, end_ts) + skew[f.device_id],
                        cut_off=f.end_ts > end_ts)
              for f in sim.faults if f.start_ts < end_ts]
    alerts.sort(key=lambda a: a.ts)
    return SeedRun(faults, [_event(a) for a in alerts], readings, refused, len(sim.devices) * hours)


def evaluate(settings, devices: int = 32, hours: float = 2.0, seeds: Iterable[int] = (7,), fault_every_s: float = 120.0,  # noqa: ANN001
             grace_s: float = 120.0, warmup_s: float = WARMUP_S) -> tuple[FaultReport, list[SeedRun]]:
    """Every seed's run, scored together (faults and alarms of different seeds never meet: device ids are per seed)."""
    setup = SensorSetup.from_settings(settings)
    limits = Limits.from_settings(settings)
    runs = []
    faults: list[TrueFault] = []
    alarms: list[AlarmEvent] = []
    for seed in seeds:
        run = run_seed(setup, limits, seed, devices, hours, fault_every_s, warmup_s=warmup_s)
        runs.append(run)
        faults += [TrueFault(f.kind, f"{seed}:{f.device_id}", f.metric, f.start_ts, f.end_ts, f.cut_off) for f in run.faults]
        alarms += [AlarmEvent(a.ts, f"{seed}:{a.device_id}", a.alarm_type, a.metric, a.status, a.rev) for a in run.alarms]
    return score_faults(faults, alarms, sum(r.device_hours for r in runs), grace_s), runs


def report_text(settings, devices: int = 32, hours: float = 2.0, seeds: Iterable[int] = (7,), fault_every_s: float = 120.0,  # noqa: ANN001
                warmup_s: float = WARMUP_S) -> str:
    seeds = list(seeds)
    report, runs = evaluate(settings, devices, hours, seeds, fault_every_s, warmup_s=warmup_s)
    cfg = WarehouseConfig()
    title = (f"Injected faults, {devices} devices x {hours:g} simulated hours x seeds {','.join(map(str, seeds))}, "
             f"after {warmup_s / 60:g} min of normal operation a fault about every {fault_every_s:g}s lasting 60s (a compressor failure {cfg.compressor_duration_s / 60:g} min, "
             f"+{cfg.compressor_drift_c_per_min:g} °C/min): {sum(r.readings for r in runs)} readings scored, "
             f"{sum(r.refused for r in runs)} payloads refused by validation")
    return format_report(report, title)
