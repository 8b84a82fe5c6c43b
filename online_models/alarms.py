"""Alarms with a ThingsBoard-like lifecycle, and the device conditions that raise them (plain code, no Faust).

- One *active* alarm per (source, alarm type): a condition that persists updates it
  (an event only when its severity changes), it never opens a duplicate.
- An alarm clears once its condition has been normal for ``clear_after`` seconds of
  *event time*; time comes from the events, never the wall clock, so replaying the
  same events after a crash reproduces the same alarm ids and revisions.
- Status: ``ACTIVE_UNACK -> ACTIVE_ACK`` (operator ack) ``-> CLEARED_ACK``, or
  ``ACTIVE_UNACK -> CLEARED_UNACK -> CLEARED_ACK``. A cleared alarm is closed: the
  next occurrence of the condition opens a new alarm (new ``alarm_id``).
- Every state change returns an :class:`schemas.events.Alert`; ``details["rev"]``
  counts the changes of one alarm, so ``(alarm_id, rev)`` identifies an event and
  consumers can drop the copies that an at-least-once producer may send.

>>> book = AlarmBook("dev-1", clear_after=10)
>>> book.raise_("rule:temperature", Severity.MAJOR, 100.0, "too warm").status
'ACTIVE_UNACK'
>>> book.raise_("rule:temperature", Severity.MAJOR, 101.0, "too warm") is None  # updated, not duplicated
True
>>> book.normal("rule:temperature", 105.0) is None, book.normal("rule:temperature", 115.0).status
(True, 'CLEARED_UNACK')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from online_models.anomaly.rules import RuleSet
from schemas.events import AlarmStatus, Alert, Severity
from schemas.state import StateTypes

SEVERITY_RANK = {Severity.WARNING: 0, Severity.MINOR: 1, Severity.MAJOR: 2, Severity.CRITICAL: 3}


def alarm_id(source_id: str, alarm_type: str, start_ts: float) -> str:
    """Deterministic id; starts with the source id (no `/` in ids), which routes an ack to the owner."""
    return f"{source_id}/{alarm_type}/{int(round(start_ts * 1000))}"


def source_of(alarm_id_: str) -> str:
    """The device (or item) id an alarm id belongs to."""
    source, sep, _ = alarm_id_.partition("/")
    if not sep or not source:
        raise ValueError(f"{alarm_id_!r} is not an alarm id (`source/type/start_ms`)")
    return source


@dataclass
class Alarm:
    alarm_id: str
    alarm_type: str
    source_type: str
    source_id: str
    site: str | None
    zone: str | None
    severity: str
    status: str
    start_ts: float
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    end_ts: float | None = None
    ack_ts: float | None = None
    rev: int = 0
    last_event_ts: float = 0.0
    last_bad_ts: float = 0.0
    normal_since: float | None = None

    @property
    def active(self) -> bool:
        return self.status in (AlarmStatus.ACTIVE_UNACK, AlarmStatus.ACTIVE_ACK)

    def copy(self) -> Alarm:
        """A copy that later changes to this alarm leave as it is (`details` is replaced on change, never edited;
        copied all the same)."""
        out = Alarm.__new__(Alarm)
        out.__dict__.update(self.__dict__)
        out.details = dict(self.details)
        return out

    def event(self, ts: float) -> Alert:
        # Event times of one alarm never go backwards (readings carry device clocks, silence the stream's
        # clock), so "latest state = the event with the greatest ts" holds for every consumer.
        ts = max(ts, self.last_event_ts)
        self.last_event_ts = ts
        self.rev += 1
        return Alert(ts=ts, alarm_id=self.alarm_id, alarm_type=self.alarm_type, source_type=self.source_type,
                     source_id=self.source_id, site=self.site, zone=self.zone, severity=self.severity, status=self.status,
                     start_ts=self.start_ts, end_ts=self.end_ts, ack_ts=self.ack_ts, message=self.message,
                     details={**self.details, "rev": self.rev})


class AlarmBook:
    """The alarms of one source (a device). Small and picklable: it is checkpointed with the device's model."""

    MAX_CLEARED_UNACK = 50  # cleared alarms kept for a late ack; older ones are closed as they are

    def __init__(self, source_id: str, source_type: str = "device", clear_after: float = 60.0) -> None:
        self.source_id = source_id
        self.source_type = source_type
        self.clear_after = clear_after
        self.active: dict[str, Alarm] = {}  # alarm_type -> the open alarm
        self.cleared_unack: dict[str, Alarm] = {}  # alarm_id -> cleared, waiting for an ack

    def copy(self) -> AlarmBook:
        """A copy that later changes leave as it is (a checkpoint's cut, `DeviceMonitor.copy`)."""
        out = AlarmBook.__new__(AlarmBook)
        out.__dict__.update(self.__dict__)
        out.active = {t: a.copy() for t, a in self.active.items()}
        out.cleared_unack = {i: a.copy() for i, a in self.cleared_unack.items()}
        return out

    def raise_(self, alarm_type: str, severity: str, ts: float, message: str, details: Mapping[str, Any] | None = None,
               site: str | None = None, zone: str | None = None) -> Alert | None:
        """The condition holds at ``ts``: open the alarm, or update the open one (event only if the severity changed)."""
        alarm = self.active.get(alarm_type)
        if alarm is None:
            alarm = Alarm(alarm_id(self.source_id, alarm_type, ts), alarm_type, self.source_type, self.source_id, site, zone,
                          severity, AlarmStatus.ACTIVE_UNACK, ts, message, dict(details or {}), last_bad_ts=ts)
            self.active[alarm_type] = alarm
            return alarm.event(ts)
        alarm.last_bad_ts = max(alarm.last_bad_ts, ts)
        alarm.normal_since = None
        if severity != alarm.severity:
            alarm.severity, alarm.message, alarm.details = severity, message, dict(details or {})
            return alarm.event(ts)
        return None

    def normal(self, alarm_type: str, ts: float) -> Alert | None:
        """The condition does not hold at ``ts``: clear the alarm once that has lasted ``clear_after`` seconds."""
        alarm = self.active.get(alarm_type)
        if alarm is None:
            return None
        if alarm.normal_since is None:
            alarm.normal_since = ts
        if ts - alarm.normal_since >= self.clear_after:
            return self._clear(alarm, ts, f"normal for {ts - alarm.normal_since:.0f}s")
        return None

    def clear(self, alarm_type: str, ts: float, reason: str) -> Alert | None:
        """Clear now (e.g. a device that announces itself online again)."""
        alarm = self.active.get(alarm_type)
        return None if alarm is None else self._clear(alarm, ts, reason)

    def _clear(self, alarm: Alarm, ts: float, reason: str) -> Alert:
        del self.active[alarm.alarm_type]
        alarm.end_ts = ts
        alarm.details = {**alarm.details, "cleared": reason}
        if alarm.status == AlarmStatus.ACTIVE_ACK:
            alarm.status = AlarmStatus.CLEARED_ACK
        else:
            alarm.status = AlarmStatus.CLEARED_UNACK
            self.cleared_unack[alarm.alarm_id] = alarm
            while len(self.cleared_unack) > self.MAX_CLEARED_UNACK:
                del self.cleared_unack[next(iter(self.cleared_unack))]
        return alarm.event(ts)

    def ack(self, alarm_id_: str, ts: float, by: str | None = None) -> Alert | None:
        """Operator ack; None if the alarm is unknown here or already acked (acks are idempotent)."""
        alarm = next((a for a in self.active.values() if a.alarm_id == alarm_id_), None)
        if alarm is not None and alarm.status == AlarmStatus.ACTIVE_UNACK:
            alarm.status = AlarmStatus.ACTIVE_ACK
        else:
            alarm = self.cleared_unack.pop(alarm_id_, None)
            if alarm is None:
                return None
            alarm.status = AlarmStatus.CLEARED_ACK
        alarm.ack_ts = ts
        if by:
            alarm.details = {**alarm.details, "acked_by": by}
        return alarm.event(ts)

    def find(self, alarm_id_: str) -> Alarm | None:
        return next((a for a in self.active.values() if a.alarm_id == alarm_id_), None) or self.cleared_unack.get(alarm_id_)


# --- device conditions ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MonitorConfig:
    clear_after: float = 60.0
    silence_factor: float = 5.0
    stuck_readings: int = 30
    anomaly_major_score: float = 0.9  # model score at which an anomaly alarm is MAJOR instead of MINOR
    # a device's first readings on which the learned model's verdict raises no alarm (rules, flatline and
    # silence still do): its calibrators have not yet seen the device's recurring events (a cold room's
    # door openings, a daily cycle's slope), so their tail probabilities are guesses. NAB leaves a detector's
    # first 15 % of a series unscored, at most 750 rows, for the same reason
    anomaly_probation: int = 750


def rule_severity(value: float, limit: float, bounds: Mapping[str, float]) -> str:
    """MAJOR at the limit; CRITICAL once beyond it by a quarter of the allowed range (or of the limit itself)."""
    lo, hi = bounds.get("min"), bounds.get("max")
    span = (hi - lo) if lo is not None and hi is not None else max(abs(limit), 1.0)
    return Severity.CRITICAL if abs(value - limit) > 0.25 * span else Severity.MAJOR


_CONTAINERS = (dict, set, list)


class DeviceMonitor:
    """Turns one device's readings, scores and status into alarm events.

    Alarm types: ``rule:<metric>`` (hard thresholds of the device type, MAJOR/CRITICAL),
    ``anomaly`` (the learned ensemble, MINOR/MAJOR, after the device's first ``anomaly_probation``
    readings), ``stuck:<metric>`` (a metric that
    used to vary repeats one value ``stuck_readings`` times, WARNING), ``silence``
    (no telemetry for ``silence_factor`` x the device's usual interval, MAJOR) and
    ``offline`` (last will / offline status, CRITICAL).
    """

    def __init__(self, device_id: str, cfg: MonitorConfig) -> None:
        self.device_id = device_id
        self.cfg = cfg
        self.alarms = AlarmBook(device_id, clear_after=cfg.clear_after)
        self.site: str | None = None
        self.zone: str | None = None
        self.device_type: str | None = None
        self.last: dict[str, float] = {}
        self.runs: dict[str, int] = {}
        self.varied: set[str] = set()
        self.last_ts: float | None = None
        self.interval = 0.0  # EW mean of inter-arrival times (event time)
        self.n = 0

    def copy(self) -> DeviceMonitor:
        """A copy that later readings leave as it is, for a checkpoint's cut (taken under the owner's lock for
        every changed device): `copy.deepcopy` took 35 us a device, this ~3. The config is shared (frozen); every
        other attribute is a number, a string, a plain container (copied) or the alarm book (copied)."""
        out = DeviceMonitor.__new__(DeviceMonitor)
        d = out.__dict__
        d.update(self.__dict__)
        for k, v in d.items():
            if type(v) in _CONTAINERS:
                d[k] = v.copy()
        out.alarms = self.alarms.copy()
        return out

    def reading(self, ts: float, metrics: Mapping[str, float], rules: RuleSet, score: float, is_anomaly: bool,
                metric: str | None) -> list[Alert]:
        """The alarm events of one reading. Runs for every reading of the sensor path (1-2 us): the common case (no
        alarm open, no rule broken, nothing stuck, no anomaly) takes no call and builds nothing but the list."""
        out: list[Alert] = []
        cfg, book = self.cfg, self.alarms
        # liveness: a reading ends silence and offline
        last_ts = self.last_ts
        if last_ts is None:
            self.last_ts = ts
        elif ts > last_ts:
            dt, interval = ts - last_ts, self.interval
            self.interval = dt if self.n <= 1 else interval + 0.05 * (min(dt, 3 * interval) - interval)
            self.last_ts = ts
        self.n += 1
        if book.active:
            for t in ("silence", "offline"):
                if t in book.active and (a := book.clear(t, ts, "telemetry resumed")):
                    out.append(a)
        bad: set[str] = set()
        # hard rules of the device type: the bounds compared here, the violations named only when there are some
        for name, lo, hi in rules.bounds.get(self.device_type or "", ()):
            x = metrics.get(name)
            if x is not None and ((lo is not None and x < lo) or (hi is not None and x > hi)):
                self._rules_broken(ts, metrics, rules, bad, out)
                break
        # flatline
        last, runs, varied, stuck = self.last, self.runs, self.varied, cfg.stuck_readings
        for name, x in metrics.items():
            prev = last.get(name)
            if prev is None or x != prev:
                if prev is not None:
                    varied.add(name)
                run = runs[name] = 1
            else:
                run = runs[name] = runs.get(name, 1) + 1
            last[name] = x
            if run >= stuck and name in varied:
                t = f"stuck:{name}"
                bad.add(t)
                a = book.raise_(t, Severity.WARNING, ts, f"{name} stuck at {x:g} for {run} readings",
                                {"metric": name, "value": x, "readings": run}, self.site, self.zone)
                if a:
                    out.append(a)
        # learned model, once past its probation
        if is_anomaly and self.n > cfg.anomaly_probation:
            bad.add("anomaly")
            sev = Severity.MAJOR if score >= cfg.anomaly_major_score else Severity.MINOR
            value = metrics.get(metric) if metric else None
            a = book.raise_("anomaly", sev, ts, f"anomalous {metric} = {value:g} (score {score:.2f})" if value is not None else
                            f"anomalous reading (score {score:.2f})", {"metric": metric, "value": value, "score": round(score, 4)},
                            self.site, self.zone)
            if a:
                out.append(a)
        # everything not bad now is normal now
        if book.active:
            for t in [t for t in book.active if t not in bad and t not in ("silence", "offline")]:
                if a := book.normal(t, ts):
                    out.append(a)
        return out

    def _rules_broken(self, ts: float, metrics: Mapping[str, float], rules: RuleSet, bad: set[str], out: list[Alert]) -> None:
        """A reading breaks a rule of its device type: raise (or update) each broken rule's alarm."""
        for v in rules.check(self.device_type or "", metrics):
            t = f"rule:{v.metric}"
            bad.add(t)
            bounds = rules.rules[v.device_type][v.metric]
            a = self.alarms.raise_(t, rule_severity(v.value, v.limit, bounds), ts, str(v),
                                   {"metric": v.metric, "value": v.value, "limit": v.limit, "bound": v.kind}, self.site, self.zone)
            if a:
                out.append(a)

    def expected_interval(self) -> float:
        return max(self.interval, 1.0)

    def check_silence(self, now: float) -> Alert | None:
        """Wall-clock check (the only one): silent for more than ``silence_factor`` usual intervals."""
        if self.last_ts is None or self.n < 3 or "silence" in self.alarms.active or "offline" in self.alarms.active:
            return None
        silent = now - self.last_ts
        limit = self.cfg.silence_factor * self.expected_interval()
        if silent <= limit:
            return None
        return self.alarms.raise_("silence", Severity.MAJOR, now, f"no telemetry for {silent:.0f}s (usual interval {self.expected_interval():.1f}s)",
                                  {"silent_s": round(silent, 1), "interval_s": round(self.expected_interval(), 2)}, self.site, self.zone)

    def status(self, ts: float, state: str, interval_s: float | None = None) -> list[Alert]:
        out: list[Alert] = []
        if interval_s:
            self.interval = interval_s
        if state == "offline":
            if a := self.alarms.raise_("offline", Severity.CRITICAL, ts, "device reported offline (last will)", {}, self.site, self.zone):
                out.append(a)
        else:
            for t in ("offline", "silence"):
                if a := self.alarms.clear(t, ts, "device online"):
                    out.append(a)
        return out


# What a device's or an item's alarms are made of: the allow-list their checkpoints are decoded with (`schemas.state`).
STATE_TYPES = StateTypes(DeviceMonitor, MonitorConfig, AlarmBook, Alarm, Severity, AlarmStatus)
