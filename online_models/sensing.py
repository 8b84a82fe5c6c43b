"""The sensor path's device step: the devices' models (one `DeviceBank`), their alarm conditions, and how a batch
of readings of many devices is scored (one call).

Plain code (no Kafka, no Faust), so that the agent (`agents.scoring`) and the fault
evaluation (`wharf evaluate faults`) build the same devices and run exactly the same step.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from online_models.alarms import DeviceMonitor, MonitorConfig
from online_models.anomaly import BatchResult, DeviceAnomalyModel, RuleSet
from online_models.anomaly.bank import DeviceBank, warm_up
from schemas.settings import Settings


@dataclass(frozen=True)
class SensorSetup:
    """What every device of the sensor path is built with (from the `sensor_*` settings)."""

    rules: RuleSet
    model_options: dict[str, Any]
    monitor: MonitorConfig

    @classmethod
    def from_settings(cls, s: Settings) -> SensorSetup:
        options = json.loads(s.sensor_model_options) if s.sensor_model_options.strip() else {}
        return cls(RuleSet(json.loads(s.sensor_rules) if s.sensor_rules.strip() else None),
                   {"max_metrics": s.sensor_max_metrics_per_device} | options,
                   MonitorConfig(clear_after=s.sensor_alarm_clear_seconds, silence_factor=s.sensor_silence_factor,
                                 stuck_readings=s.sensor_stuck_readings, anomaly_probation=s.sensor_anomaly_probation))

    def new_model(self) -> DeviceAnomalyModel:
        """A fresh device's model as one record (a checkpoint's form; `DeviceBank.insert` takes it)."""
        return DeviceAnomalyModel(**self.model_options)

    def new_bank(self) -> DeviceBank:
        """The models of all the devices one owner scores (its kernels compiled first: `warm_up`)."""
        warm_up()
        return DeviceBank(**self.model_options)

    def new_monitor(self, device_id: str) -> DeviceMonitor:
        return DeviceMonitor(device_id, self.monitor)


def score_batch(bank: DeviceBank, devices: Sequence[Hashable], ts: Sequence[float],
                metrics: Sequence[Mapping[str, float]]) -> BatchResult:
    """Score, then learn, readings of many devices (row i: device ``devices[i]``) in one model call; each device's
    readings are taken in their order here. A metric missing from a reading is NaN for that row (the model skips
    it); a device learns the metrics its readings name, in sorted order. Columns (score, is_anomaly, threshold,
    the metric that scored highest), not a tuple a reading: the sensor path scatters them by record (`agents.scoring`)."""
    names = sorted({m for row in metrics for m in row})
    cols = {m: np.array([row.get(m, np.nan) for row in metrics], dtype=float) for m in names}
    slot = {d: bank.slot(d) for d in dict.fromkeys(devices)}  # in order of first reading, as one by one would
    slots = np.array([slot[d] for d in devices], dtype=np.int64)
    return bank.score_learn_batch(slots, np.array(ts, dtype=float), cols)
