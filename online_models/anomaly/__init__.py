"""Streaming anomaly detection for device telemetry (no Kafka/Faust here).

>>> m = DeviceAnomalyModel()
>>> r = m.score_learn_one(1_700_000_000.0, {"temperature": 4.2})
>>> 0.0 <= r.score <= 1.0
True
"""

from online_models.anomaly.detectors import SilenceDetector
from online_models.anomaly.model import AnomalyConfig, AnomalyResult, BatchResult, DeviceAnomalyModel
from online_models.anomaly.rules import DEFAULT_RULES, RuleSet, Violation

__all__ = [
    "DEFAULT_RULES", "AnomalyConfig", "AnomalyResult", "BatchResult", "DeviceAnomalyModel",
    "RuleSet", "SilenceDetector", "Violation",
]
