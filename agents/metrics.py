"""The agents' series for `GET /metrics` (streams/web/metrics.py): checkpoints per path and alarms by state.

Read at scrape time from what the agents keep anyway (their checkpoint counters, the alarm books of the
devices this worker owns); lent to the view (`streams.web.registry`) when the agents are imported.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from agents.recommender import recommenders
from agents.reviews import sentiment
from agents.scoring import owner
from schemas.events import AlarmStatus
from streams.web.registry import lent


def collect() -> Iterator[Metric]:
    checkpoints = CounterMetricFamily("wharf_checkpoints", "Model-state checkpoints written to the changelog, per path.", labels=["path"])
    for path, n in (("sensors", owner.checkpoints), ("recommender", recommenders.checkpoints), ("sentiment", sentiment.checkpoints)):
        checkpoints.add_metric([path], n)
    yield checkpoints
    states: Counter[str] = Counter({s.value: 0 for s in AlarmStatus if s != AlarmStatus.CLEARED_ACK})
    for st in list(owner.devices.values()):
        book = st.monitor.alarms
        states.update(str(a.status) for a in list(book.active.values()))
        states[AlarmStatus.CLEARED_UNACK.value] += len(book.cleared_unack)
    alarms = GaugeMetricFamily("wharf_alarms", "Open alarms of the devices this worker owns, by state (cleared and acknowledged ones are closed).",
                               labels=["state"])
    for state, n in sorted(states.items()):
        alarms.add_metric([state], n)
    yield alarms
    yield CounterMetricFamily("wharf_sensor_duplicates", "Readings dropped as exact duplicates (device_id, seq, ts).", value=owner.duplicates)


lent.metric_families.append(collect)
