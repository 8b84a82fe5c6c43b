"""`wharf evaluate faults`: the simulator's faults through the sensor path's device step, in simulated time."""

from __future__ import annotations

from online_models.evaluation.faults import AlarmEvent, TrueFault, format_report, score_faults
from online_models.sensing import SensorSetup
from schemas.validation import Limits
from wharf import faults
from schemas.settings import Settings

SETTINGS = Settings()
SETUP = SensorSetup.from_settings(SETTINGS)
LIMITS = Limits.from_settings(SETTINGS)


def _scored(run: faults.SeedRun):
    return score_faults(run.faults, run.alarms, run.device_hours)


def test_injected_spikes_and_silence_are_detected_within_the_fault():
    # device 1 is a conveyor (vibration), device 2 a forklift; the spikes start after the model's probation
    # (750 readings, one a second: no anomaly alarm before), the silence after 700 s
    run = faults.run_seed(SETUP, LIMITS, seed=3, devices=4, hours=0.3, fault_every_s=0,
                          inject=[("spikes", 1, 800.0, 60.0), ("silent", 2, 700.0, 60.0)])
    report = _scored(run)
    assert {k: (s.injections, s.detected) for k, s in report.kinds.items()} == {"spikes": (1, 1), "silent": (1, 1)}
    spikes, silent = report.outcomes
    assert spikes.first_type == "anomaly" and 0.0 <= spikes.delay <= 60.0
    assert silent.first_type == "silence" and 5.0 <= silent.delay <= 10.0  # silence_factor 5 x a 1 s interval
    again = _scored(faults.run_seed(SETUP, LIMITS, seed=3, devices=4, hours=0.3, fault_every_s=0,
                                    inject=[("spikes", 1, 800.0, 60.0), ("silent", 2, 700.0, 60.0)]))
    assert [o.first_ts for o in again.outcomes] == [o.first_ts for o in report.outcomes]  # deterministic


def test_clean_run_has_no_faults_and_every_alarm_is_false():
    run = faults.run_seed(SETUP, LIMITS, seed=5, devices=4, hours=0.1, fault_every_s=0)
    report = _scored(run)
    assert run.faults == [] and report.kinds == {} and run.refused == 0
    assert report.false_alarms == sum(a.opened for a in run.alarms)
    assert run.readings > 4 * 0.1 * 3600 * 0.9


def test_false_alarms_and_delays_on_a_constructed_case():
    f = TrueFault("spikes", "d1", "vibration", 100.0, 160.0)
    g = TrueFault("compressor_failure", "d2", "temperature", 100.0, 160.0)
    alarms = [
        AlarmEvent(50.0, "d1", "anomaly", "vibration", "ACTIVE_UNACK", 1),  # before the fault: false
        AlarmEvent(104.0, "d1", "anomaly", "motor_temp", "ACTIVE_UNACK", 1),  # another metric: no hit, inside the span: not false
        AlarmEvent(110.0, "d1", "anomaly", "vibration", "ACTIVE_UNACK", 1),  # the hit, 10 s
        AlarmEvent(200.0, "d1", "anomaly", "vibration", "ACTIVE_UNACK", 1),  # in the grace period: neither
        AlarmEvent(300.0, "d1", "anomaly", "vibration", "ACTIVE_UNACK", 1),  # after grace: false
        AlarmEvent(310.0, "d1", "anomaly", "vibration", "CLEARED_UNACK", 2),  # a clear is no alarm
        AlarmEvent(140.0, "d2", "rule:temperature", "temperature", "ACTIVE_UNACK", 1),
        AlarmEvent(150.0, "d2", "anomaly", "temperature", "ACTIVE_UNACK", 1),
        AlarmEvent(20.0, "d3", "silence", None, "ACTIVE_UNACK", 1),  # a device without faults: false
    ]
    r = score_faults([f, g], alarms, device_hours=2.0, grace_s=120.0)
    assert r.false_alarms == 3 and r.false_per_device_hour == 1.5
    assert r.false_alarm_types == {"anomaly": 2, "silence": 1}
    assert r.outcomes[0].delay == 10.0 and r.outcomes[0].first_type == "anomaly"
    comp = r.kinds["compressor_failure"]
    assert (comp.detected, comp.rule_fired, comp.model_alarmed, comp.model_first, comp.model_leads) == (1, 1, 1, 0, [-10.0])


def test_a_fault_missed_under_an_alarm_that_was_already_open_is_counted_apart():
    f = TrueFault("spikes", "d1", "battery", 100.0, 160.0)
    opened_before = [AlarmEvent(80.0, "d1", "anomaly", "battery", "ACTIVE_UNACK", 1),
                     AlarmEvent(200.0, "d1", "anomaly", "battery", "CLEARED_UNACK", 2)]
    r = score_faults([f], opened_before, device_hours=1.0)
    assert r.kinds["spikes"].detected == 0 and r.kinds["spikes"].missed_while_alarming == 1 and r.false_alarms == 1
    cleared_before = [opened_before[0], AlarmEvent(90.0, "d1", "anomaly", "battery", "CLEARED_UNACK", 2)]
    assert score_faults([f], cleared_before, device_hours=1.0).kinds["spikes"].missed_while_alarming == 0


def test_a_fault_cut_off_by_the_runs_end_before_any_alarm_is_unresolved_not_missed():
    cut = TrueFault("compressor_failure", "d1", "temperature", 100.0, 430.0, cut_off=True)  # the run ended at 430
    cut_seen = TrueFault("compressor_failure", "d2", "temperature", 100.0, 430.0, cut_off=True)
    whole = TrueFault("compressor_failure", "d3", "temperature", 100.0, 1900.0)
    alarms = [AlarmEvent(400.0, "d2", "anomaly", "temperature", "ACTIVE_UNACK", 1),  # flagged before the end: detected
              AlarmEvent(1000.0, "d3", "rule:temperature", "temperature", "ACTIVE_UNACK", 1)]  # the rule, no model
    r = score_faults([cut, cut_seen, whole], alarms, device_hours=3.0)
    k = r.kinds["compressor_failure"]
    assert (k.injections, k.detected, k.unresolved, k.missed, k.rate) == (3, 2, 1, 0, 1.0)
    assert (k.model_first, k.race_open) == (1, 1)  # d2's model alarm came before any rule; d1's race is open
    text = format_report(r)
    assert "before the rule (or without it) in 1 of 2" in text and "1 cut off by the run's end" in text
