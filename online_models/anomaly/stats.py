"""Cheap streaming statistics in plain Python floats (a few per metric, so checkpoints stay small).

Plain floats beat NumPy for per-event scalar updates (no array overhead); the
batch path of the model calls the same code in a tight loop.
"""

from __future__ import annotations

import math

_SQRT2 = math.sqrt(2.0)
_LOG10 = math.log(10.0)


def neg_log10_tail(z: float) -> float:
    """-log10 of the one-sided Gaussian tail Q(z); asymptotic form for large z (no underflow)."""
    if z < 5.0:
        q = 0.5 * math.erfc(z / _SQRT2)
        return -math.log10(q) if q > 0 else 0.0
    # log Q(z) ~ -z^2/2 - log(z sqrt(2 pi)) + log(1 - 1/z^2)
    return (0.5 * z * z + math.log(z * 2.5066282746310002) - math.log1p(-1.0 / (z * z))) / _LOG10


class RobustLevel:
    """EWMA level + EW mean absolute deviation, updated with Huber-clipped values.

    Clipping the update to ``mean +- clip * scale`` keeps a single spike from
    dragging the baseline (median/MAD-like robustness) while a persistent level
    shift is still followed, at ``alpha * clip * scale`` per event.
    """

    __slots__ = ("alpha", "clip", "mean", "mad", "n")

    def __init__(self, alpha: float = 0.02, clip: float = 4.0) -> None:
        self.alpha = alpha
        self.clip = clip
        self.mean = 0.0
        self.mad = 0.0
        self.n = 0

    def scale(self) -> float:
        return 1.2533 * self.mad  # MAD of a Gaussian -> sigma

    def z(self, x: float) -> float:
        s = self.scale()
        if self.n < 2:
            return 0.0
        return (x - self.mean) / (s if s > 1e-12 else 1e-12)

    def update(self, x: float) -> None:
        if self.n == 0:
            self.mean = x
            self.n = 1
            return
        a = max(self.alpha, 1.0 / (self.n + 1))
        d = x - self.mean
        lim = self.clip * self.scale()
        if self.n > 10 and lim > 0:
            d = max(-lim, min(lim, d))
        self.mean += a * d
        self.mad += a * (abs(d) - self.mad)
        self.n += 1


class SeasonalProfile:
    """Daily profile: per time-of-day bin EW mean, with a shared EW residual scale.

    ``z()`` is only trusted (``mature``) once every bin was seen a few times and
    its one-step error is tracked against the plain level's so callers can tell
    whether the series actually has daily seasonality.
    """

    __slots__ = ("bins", "alpha", "means", "counts", "mad", "n")

    def __init__(self, bins: int = 48, alpha: float = 0.15) -> None:
        self.bins = bins
        self.alpha = alpha
        self.means = [0.0] * bins
        self.counts = [0] * bins
        self.mad = 0.0
        self.n = 0

    def bin_of(self, ts: float) -> int:
        return int((ts % 86400.0) / 86400.0 * self.bins) % self.bins

    def mature(self) -> bool:
        return min(self.counts) >= 3

    def residual(self, ts: float, x: float) -> float:
        b = self.bin_of(ts)
        return x - self.means[b] if self.counts[b] else 0.0

    def z(self, ts: float, x: float) -> float:
        s = 1.2533 * self.mad
        return self.residual(ts, x) / (s if s > 1e-12 else 1e-12) if self.mature() else 0.0

    def update(self, ts: float, x: float, lim: float) -> None:
        b = self.bin_of(ts)
        c = self.counts[b]
        if c == 0:
            self.means[b] = x
        else:
            d = x - self.means[b]
            if lim > 0 and self.n > 50:
                d = max(-lim, min(lim, d))
            a = max(self.alpha, 1.0 / (c + 1))
            if self.counts[b] >= 1:
                self.mad += max(0.002, 1.0 / (self.n + 1)) * (abs(d) - self.mad)
                self.n += 1
            self.means[b] += a * d
        self.counts[b] = c + 1


class GaussianTail:
    """Calibrates a non-negative raw score into evidence E = -log10(tail probability).

    Tracks EW mean/std of ``u = log1p(raw)`` (clipped updates so anomalies do not
    inflate the spread) and reports the Gaussian upper-tail probability of the
    current ``u``. Each detector is thereby judged against its *own* history on
    *this* series, which is what makes one corpus-wide threshold work.
    """

    __slots__ = ("alpha", "mean", "var", "n", "warmup")

    def __init__(self, alpha: float = 0.002, warmup: int = 60) -> None:
        self.alpha = alpha
        self.mean = 0.0
        self.var = 0.0
        self.n = 0
        self.warmup = warmup

    def evidence(self, raw: float) -> float:
        if self.n < self.warmup:
            return 0.0
        u = math.log1p(raw)
        sd = math.sqrt(self.var) if self.var > 1e-12 else 1e-6
        z = (u - self.mean) / sd
        return neg_log10_tail(z) if z > 0 else 0.0

    def update(self, raw: float) -> None:
        u = math.log1p(raw)
        if self.n == 0:
            self.mean = u
            self.n = 1
            return
        a = max(self.alpha, 1.0 / (self.n + 1))
        sd = math.sqrt(self.var)
        if self.n > self.warmup and sd > 0:
            u = min(u, self.mean + 4.0 * sd)
        d = u - self.mean
        self.mean += a * d
        self.var = (1 - a) * (self.var + a * d * d)
        self.n += 1


class StreamingQuantile:
    """Frugal-style streaming quantile (stochastic approximation), O(1) state.

    The step is proportional to a running scale so it works for any units.
    """

    __slots__ = ("q", "value", "step", "n")

    def __init__(self, q: float = 0.995, init: float = 0.0, step: float = 0.01) -> None:
        self.q = q
        self.value = init
        self.step = step
        self.n = 0

    def update(self, x: float) -> None:
        self.n += 1
        if x > self.value:
            self.value += self.step * self.q
        else:
            self.value -= self.step * (1.0 - self.q)


class TailCalibrator:
    """Raw score -> evidence ``E = -log10(P[raw' >= raw])`` from a decayed histogram of its own history.

    Empirical, so heavy-tailed detectors (forecast errors at the sharp edges of a
    square wave, bursty latency) are judged by how *they* usually behave, not by
    a Gaussian assumption. Bins are on ``u = log1p(raw)`` (width ``1/bins_per_unit``);
    beyond the largest value seen, the tail is extrapolated as a power law in
    ``1 + raw`` so "bigger than anything before" still ranks by how much bigger.
    Decay by up-weighting new samples (no per-bin work per event).
    """

    __slots__ = ("counts", "weight", "total", "decay", "warmup", "n", "bpu", "top", "power")

    def __init__(self, half_life: float = 2000.0, warmup: int = 60, bins: int = 48,
                 bins_per_unit: float = 4.0, power: float = 3.0) -> None:
        self.counts = [0.0] * bins
        self.weight = 1.0
        self.total = 0.0
        self.decay = 0.5 ** (-1.0 / half_life)  # weight growth per event
        self.warmup = warmup
        self.n = 0
        self.bpu = bins_per_unit
        self.top = -1  # highest non-empty bin
        self.power = power

    def _bin(self, u: float) -> int:
        b = int(u * self.bpu)
        return b if b < len(self.counts) else len(self.counts) - 1

    def evidence(self, raw: float) -> float:
        if self.n < self.warmup or raw <= 0.0:
            return 0.0
        u = math.log1p(raw)
        b = self._bin(u)
        if b <= self.top:
            tail = sum(self.counts[b:])
            return -math.log10(tail / self.total) if tail < self.total else 0.0
        # Beyond every past value: p = p(top bin) * ((1 + raw) / (1 + edge)) ** -power.
        edge = (self.top + 1) / self.bpu
        p_top = self.counts[self.top] / self.total if self.top >= 0 else 1.0
        return -math.log10(p_top) + self.power * (u - edge) / _LOG10

    def update(self, raw: float) -> None:
        b = self._bin(math.log1p(max(raw, 0.0)))
        self.weight *= self.decay
        self.counts[b] += self.weight
        self.total += self.weight
        if b > self.top:
            self.top = b
        self.n += 1
        if self.weight > 1e50:  # renormalise to keep floats finite
            s = 1.0 / self.weight
            self.counts = [c * s for c in self.counts]
            self.total *= s
            self.weight = 1.0
