"""Liveness detectors that are not about the values: silent devices."""

from __future__ import annotations


class SilenceDetector:
    """Flags a device that went quiet: no reading for ``factor`` x its usual interval.

    The usual interval is an EW mean of inter-arrival times (robust to single
    long gaps by clipping the update), floored at ``min_interval`` seconds.
    """

    __slots__ = ("factor", "min_interval", "alpha", "interval", "last_ts", "n")

    def __init__(self, factor: float = 5.0, min_interval: float = 1.0, alpha: float = 0.05) -> None:
        self.factor = factor
        self.min_interval = min_interval
        self.alpha = alpha
        self.interval = 0.0
        self.last_ts: float | None = None
        self.n = 0

    def observe(self, ts: float) -> None:
        if self.last_ts is not None:
            dt = ts - self.last_ts
            if dt <= 0:
                return  # duplicate / out of order: does not move the clock back
            if self.n == 0:
                self.interval = dt
            else:
                dt = min(dt, 3.0 * self.interval)
                self.interval += self.alpha * (dt - self.interval)
            self.n += 1
        if self.last_ts is None or ts > self.last_ts:
            self.last_ts = ts

    def expected_interval(self) -> float:
        return max(self.interval, self.min_interval)

    def silent_for(self, now: float) -> float:
        return 0.0 if self.last_ts is None else max(0.0, now - self.last_ts)

    def check(self, now: float) -> bool:
        """True when the device has been silent for more than ``factor`` usual intervals."""
        if self.last_ts is None or self.n < 2:
            return False
        return now - self.last_ts > self.factor * self.expected_interval()
