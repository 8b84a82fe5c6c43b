"""Scoring injected faults against the alarms a detector raised: hits, delays, false alarms.

Pure bookkeeping over two lists (no simulator here: it lives a floor above, in
`wharf.faults`): the ground truth (`TrueFault`) and the alarm events the sensor
path's device step produced (`AlarmEvent`).

- A fault is *detected* by the first alarm event on its device, for its metric (or a
  device-level alarm without a metric: silence, offline), with an active status, at
  a time in ``[start, end]``; the delay is that time minus ``start``.
- A *false alarm* is an alarm opening (its first event) on a device at a time outside
  every ``[start, end + grace]`` of that device's faults. Alarms opened in the grace
  period after a fault are neither (the detector may still be reacting to it).
- For each fault, ``rule_ts`` (when a hard limit rule first fired within it, if ever)
  is kept beside ``model_ts`` (the learned model's first alarm), to say whether the
  model warned before the rule.
- A fault the run ended before it did (``cut_off``: its ``end_ts`` is the run's end) and that no matching alarm
  flagged in the span the run saw is *unresolved*: neither detected nor missed, and left out of the detection
  rate and of the model-vs-rule comparison (a compressor failure that started 5 minutes before the end has
  warmed its room ~1.4 °C: neither the 8 °C rule nor a model that needs ~5-9 minutes could have flagged it
  yet, and counting it as a miss would charge the detector for the run's length). Reported as its own
  column, never dropped; one that was flagged in time counts as detected like any other.
- A fault missed while a matching alarm was already active when it started (opened
  by an earlier fault or a false alarm, not yet cleared) is counted apart: the
  alarm book updates an open alarm instead of opening another, so no new event says
  "this fault"; an operator would still see the device alarming.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

ACTIVE = ("ACTIVE_UNACK", "ACTIVE_ACK")


@dataclass(frozen=True)
class TrueFault:
    kind: str
    device_id: str
    metric: str
    start_ts: float
    end_ts: float
    cut_off: bool = False  # the run ended before the fault did (end_ts is the run's end)


@dataclass(frozen=True)
class AlarmEvent:
    ts: float
    device_id: str
    alarm_type: str  # rule:<metric>, anomaly, stuck:<metric>, silence, offline
    metric: str | None
    status: str
    rev: int  # 1: the alarm opened

    @property
    def opened(self) -> bool:
        return self.rev == 1


@dataclass
class FaultOutcome:
    fault: TrueFault
    first_ts: float | None = None  # first matching alarm
    first_type: str | None = None
    model_ts: float | None = None  # first `anomaly` alarm (the learned model)
    rule_ts: float | None = None  # first `rule:<metric>` alarm (a hard limit)
    already_alarming: bool = False  # a matching alarm was active when the fault started

    @property
    def unresolved(self) -> bool:
        """Cut off by the run's end before any matching alarm: the run cannot say detected or missed."""
        return self.fault.cut_off and self.first_ts is None

    @property
    def rule_race_open(self) -> bool:
        """Cut off before either the model or the rule alarmed: the run cannot say which came first."""
        return self.fault.cut_off and self.model_ts is None and self.rule_ts is None

    @property
    def delay(self) -> float | None:
        return None if self.first_ts is None else self.first_ts - self.fault.start_ts


@dataclass
class KindSummary:
    kind: str
    injections: int
    detected: int
    delays: list[float] = field(default_factory=list)
    missed_while_alarming: int = 0  # missed, with a matching alarm already active at the start
    by_type: dict[str, int] = field(default_factory=dict)  # the alarm type that detected first
    model_alarmed: int = 0  # faults where the learned model raised an `anomaly` alarm
    model_first: int = 0  # ... no later than the rule (or the rule never fired)
    rule_fired: int = 0
    model_leads: list[float] = field(default_factory=list)  # rule_ts - model_ts where both fired
    unresolved: int = 0  # cut off by the run's end before any matching alarm: neither detected nor missed
    race_open: int = 0  # cut off before either the model or the rule alarmed: not in the model-vs-rule count

    @property
    def resolved(self) -> int:
        return self.injections - self.unresolved

    @property
    def missed(self) -> int:
        return self.resolved - self.detected

    @property
    def rate(self) -> float:
        return self.detected / self.resolved if self.resolved else 0.0

    def delay_p(self, q: float) -> float | None:
        return float(np.percentile(self.delays, q)) if self.delays else None


@dataclass
class FaultReport:
    outcomes: list[FaultOutcome]
    kinds: dict[str, KindSummary]
    false_alarms: int
    false_alarm_types: dict[str, int]
    device_hours: float
    grace_s: float

    @property
    def false_per_device_hour(self) -> float:
        return self.false_alarms / self.device_hours if self.device_hours else 0.0


def _matches(fault: TrueFault, a: AlarmEvent) -> bool:
    return a.device_id == fault.device_id and (a.metric is None or a.metric == fault.metric)


def score_faults(faults: Iterable[TrueFault], alarms: Iterable[AlarmEvent], device_hours: float, grace_s: float = 120.0) -> FaultReport:
    """Match alarm events to the faults (see the module doc); alarms must be in event order per device."""
    faults = list(faults)
    by_device: dict[str, list[AlarmEvent]] = defaultdict(list)
    for a in alarms:
        by_device[a.device_id].append(a)
    outcomes = []
    for f in faults:
        o = FaultOutcome(f)
        open_at_start: dict[str, AlarmEvent] = {}  # alarm type -> its opening event, for alarms open at the fault's start
        for a in by_device.get(f.device_id, []):
            if a.ts >= f.start_ts:
                break
            if a.status in ACTIVE:
                open_at_start.setdefault(a.alarm_type, a)
            else:
                open_at_start.pop(a.alarm_type, None)
        o.already_alarming = any(_matches(f, a) for a in open_at_start.values())
        for a in by_device.get(f.device_id, []):
            if not (f.start_ts <= a.ts <= f.end_ts) or a.status not in ACTIVE or not _matches(f, a):
                continue
            if o.first_ts is None:
                o.first_ts, o.first_type = a.ts, a.alarm_type
            if a.alarm_type == "anomaly" and o.model_ts is None:
                o.model_ts = a.ts
            if a.alarm_type.startswith("rule:") and o.rule_ts is None:
                o.rule_ts = a.ts
        outcomes.append(o)
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for f in faults:
        spans[f.device_id].append((f.start_ts, f.end_ts + grace_s))
    false_types: dict[str, int] = defaultdict(int)
    for device, events in by_device.items():
        for a in events:
            if a.opened and not any(s <= a.ts <= e for s, e in spans.get(device, [])):
                false_types[a.alarm_type.split(":")[0]] += 1
    kinds: dict[str, KindSummary] = {}
    for o in outcomes:
        k = kinds.setdefault(o.fault.kind, KindSummary(o.fault.kind, 0, 0))
        k.injections += 1
        if o.first_ts is not None:
            k.detected += 1
            k.delays.append(o.delay)
            k.by_type[o.first_type.split(":")[0]] = k.by_type.get(o.first_type.split(":")[0], 0) + 1
        elif o.unresolved:
            k.unresolved += 1
        elif o.already_alarming:
            k.missed_while_alarming += 1
        k.race_open += o.rule_race_open
        if o.rule_ts is not None:
            k.rule_fired += 1
        if o.model_ts is not None:
            k.model_alarmed += 1
            k.model_first += o.rule_ts is None or o.model_ts <= o.rule_ts
        if o.model_ts is not None and o.rule_ts is not None:
            k.model_leads.append(o.rule_ts - o.model_ts)
    return FaultReport(outcomes, dict(sorted(kinds.items())), sum(false_types.values()), dict(sorted(false_types.items())),
                       device_hours, grace_s)


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def format_report(report: FaultReport, title: str = "") -> str:
    """A plain-text table per fault kind, then false alarms and the model-vs-rule comparison."""
    lines = [title] if title else []
    lines.append(f"  {'fault':<20} {'injected':>8} {'detected':>8} {'missed':>6} {'rate':>6} {'delay p50':>9} {'delay p90':>9}"
                 f"  {'missed, already alarming':>24}  {'cut off by the end':>18}  first alarm types")
    for k in report.kinds.values():
        types = ", ".join(f"{t} {n}" for t, n in sorted(k.by_type.items()))
        lines.append(f"  {k.kind:<20} {k.injections:>8} {k.detected:>8} {k.missed:>6} {100 * k.rate:>5.0f}% "
                     f"{_fmt(k.delay_p(50)):>8}s {_fmt(k.delay_p(90)):>8}s  {k.missed_while_alarming:>24}  {k.unresolved:>18}  {types}")
    types = ", ".join(f"{t} {n}" for t, n in report.false_alarm_types.items()) or "none"
    lines.append(f"  false alarms: {report.false_alarms} in {report.device_hours:.1f} device-hours = "
                 f"{report.false_per_device_hour:.2f} per device-hour ({types}); grace after a fault {report.grace_s:.0f}s")
    for k in report.kinds.values():
        if k.rule_fired:
            leads = (f"; rule time minus model time p50 {np.percentile(k.model_leads, 50):+.1f}s over {len(k.model_leads)}"
                     if k.model_leads else "")
            lines.append(f"  {k.kind} vs its limit rule: rule fired in {k.rule_fired} of {k.injections}, the learned model "
                         f"alarmed in {k.model_alarmed}, before the rule (or without it) in {k.model_first} of "
                         f"{k.injections - k.race_open}{leads}"
                         + (f" ({k.race_open} cut off by the run's end before either alarmed)" if k.race_open else ""))
    return "\n".join(lines)
