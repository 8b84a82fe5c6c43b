"""Alarm lifecycle (plain code): one active alarm per type, updated not duplicated, cleared after a normal spell, acks."""

import pytest

from online_models.alarms import STATE_TYPES, AlarmBook, DeviceMonitor, MonitorConfig, alarm_id, source_of
from online_models.anomaly import RuleSet
from schemas.events import AlarmStatus, Alert, Severity
from schemas.state import StateCodec


def test_raise_update_clear_with_delay_and_revisions():
    book = AlarmBook("dev-1", clear_after=10)
    a = book.raise_("rule:temperature", Severity.MAJOR, 100.0, "9 > 8")
    assert a.status == AlarmStatus.ACTIVE_UNACK and a.alarm_id == "dev-1/rule:temperature/100000" and a.details["rev"] == 1
    assert book.raise_("rule:temperature", Severity.MAJOR, 101.0, "9.1 > 8") is None  # same alarm, nothing new
    b = book.raise_("rule:temperature", Severity.CRITICAL, 102.0, "12 > 8")  # escalation is an update of the same alarm
    assert (b.alarm_id, b.severity, b.status, b.details["rev"]) == (a.alarm_id, "CRITICAL", "ACTIVE_UNACK", 2)
    assert book.normal("rule:temperature", 103.0) is None
    assert book.raise_("rule:temperature", Severity.CRITICAL, 108.0, "bad again") is None  # resets the normal spell
    assert book.normal("rule:temperature", 110.0) is None
    assert book.normal("rule:temperature", 119.0) is None
    c = book.normal("rule:temperature", 120.0)
    assert (c.status, c.end_ts, c.details["rev"]) == ("CLEARED_UNACK", 120.0, 3)
    # the next occurrence is a new alarm
    d = book.raise_("rule:temperature", Severity.MAJOR, 130.0, "again")
    assert d.alarm_id != a.alarm_id and d.details["rev"] == 1


def test_ack_paths_and_idempotence():
    book = AlarmBook("dev-1", clear_after=0)
    a = book.raise_("anomaly", Severity.MINOR, 10.0, "x")
    acked = book.ack(a.alarm_id, 11.0, by="ops")
    assert (acked.status, acked.ack_ts, acked.details["acked_by"]) == ("ACTIVE_ACK", 11.0, "ops")
    assert book.ack(a.alarm_id, 12.0) is None  # already acked
    cleared = book.normal("anomaly", 13.0)
    assert cleared.status == AlarmStatus.CLEARED_ACK and not book.active and not book.cleared_unack
    b = book.raise_("anomaly", Severity.MINOR, 20.0, "y")
    assert book.normal("anomaly", 21.0).status == AlarmStatus.CLEARED_UNACK
    late = book.ack(b.alarm_id, 30.0)
    assert late.status == AlarmStatus.CLEARED_ACK and late.end_ts == 21.0
    assert book.ack(b.alarm_id, 31.0) is None and book.ack("dev-1/anomaly/1", 31.0) is None


def test_alarm_ids_route_to_their_device():
    assert source_of(alarm_id("cold-7.a", "stuck:temperature", 1.5)) == "cold-7.a"
    with pytest.raises(ValueError):
        source_of("nonsense")


def test_events_are_valid_alert_json():
    book = AlarmBook("dev-1")
    a = book.raise_("offline", Severity.CRITICAL, 5.0, "gone", site="s", zone="z")
    assert Alert.model_validate_json(a.model_dump_json()) == a


def test_monitor_rules_stuck_anomaly_silence_offline():
    mon = DeviceMonitor("dev-1", MonitorConfig(clear_after=5, silence_factor=5, stuck_readings=4, anomaly_probation=0))
    mon.site, mon.zone, mon.device_type = "s", "z", "cold_room"
    rules = RuleSet()
    events = []
    t = 0.0
    for v in (4.0, 4.5, 9.0, 9.5, 4.2, 4.3, 4.4, 4.5):  # too warm twice, then normal
        t += 1
        events += mon.reading(t, {"temperature": v}, rules, 0.1, False, None)
    assert [(e.alarm_type, e.status, e.severity) for e in events] == [("rule:temperature", "ACTIVE_UNACK", "MAJOR")]
    for _ in range(3):
        t += 1
        events += mon.reading(t, {"temperature": 4.5}, rules, 0.1, False, None)
    assert [(e.alarm_type, e.status) for e in events[1:]] == [("rule:temperature", "CLEARED_UNACK"), ("stuck:temperature", "ACTIVE_UNACK")]
    t += 1
    events += mon.reading(t, {"temperature": 20.0}, rules, 0.95, True, "temperature")
    assert {(e.alarm_type, e.severity) for e in events[3:]} == {("rule:temperature", "CRITICAL"), ("anomaly", "MAJOR")}
    assert mon.check_silence(t + 3) is None
    silent = mon.check_silence(t + 100)
    assert silent.alarm_type == "silence" and silent.status == "ACTIVE_UNACK"
    assert mon.check_silence(t + 200) is None  # one alarm, not one per check
    back = mon.reading(t + 201, {"temperature": 5.0}, rules, 0.1, False, None)
    assert ("silence", "CLEARED_UNACK") in {(e.alarm_type, e.status) for e in back}
    off = mon.status(t + 202, "offline")
    assert [(e.alarm_type, e.severity) for e in off] == [("offline", "CRITICAL")]
    on = mon.status(t + 203, "online")
    assert [(e.alarm_type, e.status) for e in on] == [("offline", "CLEARED_UNACK")]
    codec = StateCodec(STATE_TYPES)  # checkpointed with the model (agents/devices.py)
    again = codec.loads(codec.dumps(mon))
    assert again.alarms.active.keys() == mon.alarms.active.keys()
    for book in ("active", "cleared_unack"):
        assert {k: vars(a) for k, a in getattr(again.alarms, book).items()} == {k: vars(a) for k, a in getattr(mon.alarms, book).items()}
    assert mon.alarms.cleared_unack and all(type(a.status) is AlarmStatus for a in again.alarms.cleared_unack.values())
    assert again.cfg == mon.cfg and again.varied == mon.varied


def test_no_anomaly_alarm_in_the_models_probation_but_rules_alarm():
    mon = DeviceMonitor("dev-1", MonitorConfig(anomaly_probation=3))
    mon.device_type = "cold_room"
    rules = RuleSet()
    early = [mon.reading(t, {"temperature": 4.0 + t / 10}, rules, 0.95, True, "temperature") for t in (1.0, 2.0, 3.0)]
    assert early == [[], [], []]  # the model's verdict on its first readings is not an alarm
    assert [e.alarm_type for e in mon.reading(4.0, {"temperature": 20.0}, rules, 0.95, True, "temperature")] == \
        ["rule:temperature", "anomaly"]
    late = DeviceMonitor("dev-2", MonitorConfig(anomaly_probation=3))
    late.device_type = "cold_room"
    assert [e.alarm_type for e in late.reading(1.0, {"temperature": 20.0}, rules, 0.95, True, "temperature")] == ["rule:temperature"]


def test_custom_rules_from_settings_json():
    mon = DeviceMonitor("f-1", MonitorConfig())
    mon.device_type = "forklift"
    out = mon.reading(1.0, {"battery": 12.0}, RuleSet({"forklift": {"battery": {"min": 20.0}}}), 0.0, False, None)
    assert out[0].alarm_type == "rule:battery" and out[0].details["limit"] == 20.0


def test_event_times_of_one_alarm_never_go_backwards():
    """A clear stamped with a device clock slightly behind the raise must still be the latest event of the alarm."""
    book = AlarmBook("dev-1", clear_after=0)
    raised = book.raise_("silence", Severity.MAJOR, 200.0, "no telemetry")
    cleared = book.clear("silence", 199.4, "telemetry again")  # the device's own clock lags by 0.6 s
    assert cleared.status == "CLEARED_UNACK" and cleared.ts >= raised.ts


def test_a_monitors_copy_is_its_state_and_later_readings_leave_it():
    """`DeviceMonitor.copy` is a checkpoint's cut (`agents/devices.py` `DeviceState.copy`): it must encode as the
    monitor did when copied, whatever the monitor does afterwards, and go on exactly as the monitor would."""
    mon = DeviceMonitor("dev-1", MonitorConfig(clear_after=5, stuck_readings=3, anomaly_probation=0))
    mon.site, mon.zone, mon.device_type = "s", "z", "cold_room"
    rules = RuleSet()
    script = [(4.0, False), (9.0, False), (9.0, False), (9.0, True), (4.1, False), (4.2, False)] * 3
    for t, (v, anomalous) in enumerate(script[:9]):
        mon.reading(float(t), {"temperature": v, "humidity": 50.0}, rules, 0.95, anomalous, "temperature")
    mon.alarms.ack(next(iter(mon.alarms.active.values())).alarm_id, 8.5, by="ops")
    assert mon.alarms.active and mon.runs and mon.varied
    codec = StateCodec(STATE_TYPES)
    before = codec.dumps(mon)
    cut = mon.copy()
    assert codec.dumps(cut) == before and cut.cfg is mon.cfg
    later = [mon.reading(float(t), {"temperature": v, "humidity": 50.0 + t}, rules, 0.95, anomalous, "temperature")
             for t, (v, anomalous) in enumerate(script[9:], start=9)]
    later.append(mon.status(30.0, "offline"))
    assert codec.dumps(mon) != before and codec.dumps(cut) == before  # the monitor moved on, the cut did not
    again = [cut.reading(float(t), {"temperature": v, "humidity": 50.0 + t}, rules, 0.95, anomalous, "temperature")
             for t, (v, anomalous) in enumerate(script[9:], start=9)]
    again.append(cut.status(30.0, "offline"))
    assert again == later and codec.dumps(cut) == codec.dumps(mon)
