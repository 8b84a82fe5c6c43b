"""Streaming anomaly detection for device telemetry (no Kafka/Faust here).

>>> m = DeviceAnomalyModel()
>>> r = m.score_learn_one(1_700_000_000.0, {"temperature": 4.2})
>>> 0.0 <= r.score <= 1.0
True
"""

from online_models.anomaly.detectors import SilenceDetector
from online_models.anomaly.model import AnomalyConfig, AnomalyResult, BatchResult, DeviceAnomalyModel

__all__ = ["AnomalyConfig", "AnomalyResult", "BatchResult", "DeviceAnomalyModel", "SilenceDetector"]
