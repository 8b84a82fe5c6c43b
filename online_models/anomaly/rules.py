"""Hard limits per device type (e.g. a cold room must stay between 2 and 8 °C).

Rules complement the learned models: a model learns what is *usual*, a rule
encodes what is *allowed* (a cold room drifting slowly to 9 °C is "normal" to a
model after a while, and still a violation).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_RULES: dict[str, dict[str, dict[str, float]]] = {
    "cold_room": {"temperature": {"min": 2.0, "max": 8.0}, "humidity": {"min": 30.0, "max": 95.0}},
    "conveyor": {"speed": {"min": 0.0, "max": 3.0}, "motor_temp": {"max": 85.0}, "vibration": {"max": 12.0}},
    "forklift": {"battery": {"min": 15.0}, "speed": {"max": 16.0}, "load_kg": {"min": 0.0, "max": 2500.0}},
    "dock_door": {"open_seconds": {"max": 900.0}, "temperature": {"min": -10.0, "max": 35.0}},
}


@dataclass(frozen=True, slots=True)
class Violation:
    device_type: str
    metric: str
    value: float
    limit: float
    kind: str  # "min" or "max"

    def __str__(self) -> str:
        op = "<" if self.kind == "min" else ">"
        return f"{self.device_type}.{self.metric} = {self.value:g} {op} {self.kind} {self.limit:g}"


class RuleSet:
    """``RuleSet(config).check(device_type, metrics) -> list[Violation]``.

    ``config`` maps device type -> metric -> ``{"min": x, "max": y}`` (either bound
    optional); it is merged over :data:`DEFAULT_RULES` unless ``defaults=False``.
    Unknown device types and metrics without a rule produce no violations.
    """

    def __init__(self, config: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
                 defaults: bool = True) -> None:
        rules: dict[str, dict[str, dict[str, float]]] = {}
        for src in ([DEFAULT_RULES] if defaults else []) + ([config] if config else []):
            for dtype, metrics in src.items():
                for metric, bounds in metrics.items():
                    unknown = set(bounds) - {"min", "max"}
                    if unknown:
                        raise ValueError(f"{dtype}.{metric}: unknown bound(s) {sorted(unknown)}")
                    lo, hi = bounds.get("min"), bounds.get("max")
                    if lo is not None and hi is not None and lo > hi:
                        raise ValueError(f"{dtype}.{metric}: min {lo} > max {hi}")
                    rules.setdefault(dtype, {})[metric] = {k: float(v) for k, v in bounds.items()}
        self.rules = rules
        # per device type, (metric, min, max) in rule order: `check` and the alarm step compare every reading to them
        self.bounds: dict[str, tuple[tuple[str, float | None, float | None], ...]] = {
            dtype: tuple((metric, b.get("min"), b.get("max")) for metric, b in metrics.items())
            for dtype, metrics in rules.items()}

    def check(self, device_type: str, metrics: Mapping[str, float]) -> list[Violation]:
        out: list[Violation] = []
        for metric, lo, hi in self.bounds.get(device_type, ()):
            v = metrics.get(metric)
            if v is None or v != v:
                continue
            if lo is not None and v < lo:
                out.append(Violation(device_type, metric, float(v), lo, "min"))
            if hi is not None and v > hi:
                out.append(Violation(device_type, metric, float(v), hi, "max"))
        return out
