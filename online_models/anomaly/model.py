"""Per-device, per-metric streaming anomaly ensemble (score first, then learn).

Ensemble, per metric:
  * ``level``    robust EWMA/MAD z-score of the value (spikes, level shifts);
  * ``shift``    mean of the last few signed level z-scores (sustained drifts);
  * ``seasonal`` z-score against a daily time-of-day profile (anomalies *within*
                 the normal range, e.g. a missing daily peak);
  * ``forecast`` error of a small PyTorch MLP forecaster (dynamics the statistics miss);
  * ``stuck``    run length of identical readings vs the metric's own repeat rate;
per device: ``hst`` River HalfSpaceTrees over the squashed z-scores of all metrics
(multivariate: unusual *combinations*).

Every component's raw score is calibrated against its own history on this
series into evidence ``E = -log10(tail probability)`` (:class:`GaussianTail`), so
components and devices are comparable without per-file tuning; the device
evidence is the max minus a Bonferroni term, mapped to ``score = E / e_full``
in [0, 1] (score 0.5 ~ p = 10**-(e_full/2)). ``is_anomaly`` uses a streaming
high quantile of the score, floored at ``min_threshold``. After an alarm the
score is damped for ``suppress_events`` events: one incident, one alert.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from online_models.anomaly.detectors import SilenceDetector
from online_models.anomaly.forecaster import OnlineMLPForecaster
from online_models.anomaly.stats import GaussianTail, RobustLevel, SeasonalProfile, StreamingQuantile, TailCalibrator

COMPONENTS = ("level", "shift", "seasonal", "forecast", "stuck")


@dataclass(slots=True)
class AnomalyResult:
    score: float  # calibrated, in [0, 1]
    is_anomaly: bool
    threshold: float
    metric: str | None  # the metric with the strongest evidence
    value: float | None  # its value
    components: dict[str, float] = field(default_factory=dict)  # evidence per component, -log10 p


@dataclass(slots=True)
class BatchResult:
    scores: np.ndarray
    is_anomaly: np.ndarray
    thresholds: np.ndarray
    metrics: list[str | None]


@dataclass
class AnomalyConfig:
    """One configuration for every device and metric (no per-device tuning)."""

    level_alpha: float = 0.02
    long_alpha: float = 0.002
    shift_window: int = 8
    seasonal_bins: int = 48
    calib_alpha: float = 0.002
    calib_half_life: float = 3000.0
    calib_warmup: int = 60
    lags: int = 8
    hidden: int = 16
    train_every: int = 128
    hst_every: int = 4
    epochs: int = 2
    use_forecaster: bool = True
    use_hst: bool = True
    hst_trees: int = 5
    hst_height: int = 5
    hst_window: int = 250
    e_full: float = 12.0
    min_threshold: float = 0.4
    quantile: float = 0.999
    suppress_events: int = 150
    suppress_factor: float = 0.0
    stuck_min_run: int = 5
    seed: int = 0


def _squash(z: float) -> float:
    return 0.5 + 0.5 * math.tanh(z * 0.25)


class _MetricState:
    """Everything one metric of one device needs (a few hundred floats)."""

    def __init__(self, cfg: AnomalyConfig) -> None:
        self.level = RobustLevel(cfg.level_alpha)
        self.long = RobustLevel(cfg.long_alpha, clip=6.0)
        self.seasonal = SeasonalProfile(cfg.seasonal_bins)
        self.recent: list[float] = []
        self.lagbuf: list[float] = [0.0] * cfg.lags
        self.fc = OnlineMLPForecaster(cfg.lags, cfg.hidden, train_every=cfg.train_every, epochs=cfg.epochs, seed=cfg.seed) if cfg.use_forecaster else None
        self.fc_err = 0.0
        self.n = 0
        self.last = math.nan
        self.run = 0
        self.repeat_rate = 0.5  # prior: P(reading == previous)
        self.calib = {c: TailCalibrator(cfg.calib_half_life, cfg.calib_warmup) for c in COMPONENTS if c != "stuck"}

    def norm(self, x: float) -> float:
        s = self.long.scale()
        z = (x - self.long.mean) / (s if s > 1e-9 else 1.0)
        return max(-10.0, min(10.0, z))

    def raw(self, ts: float, x: float, cfg: AnomalyConfig) -> tuple[dict[str, float], dict[str, float], np.ndarray | None]:
        """Raw component scores (>= 0) and HST features, without changing state."""
        lvl = self.level
        s_floor = 0.05 * self.long.scale()
        s = max(lvl.scale(), s_floor, 1e-9)
        zl = (x - lvl.mean) / s if lvl.n >= 2 else 0.0
        rec = self.recent
        zs = (sum(rec) + zl) / (len(rec) + 1)
        seas = self.seasonal
        if seas.mature():
            ss = max(1.2533 * seas.mad, s_floor, 1e-9)
            zseas = seas.residual(ts, x) / ss
        else:
            zseas = 0.0
        raw = {"level": abs(zl), "shift": abs(zs) * math.sqrt(len(rec) + 1) * 0.5, "seasonal": abs(zseas)}
        xin = None
        zf = 0.0
        if self.fc is not None and self.n > cfg.lags:
            xin = self.fc.inputs(self.lagbuf, ts)
            pred = self.fc.predict(xin)
            xin = (xin, pred)
            err = self.norm(x) - pred
            zf = err / max(self.fc_err * 1.2533, 0.05)
            raw["forecast"] = abs(zf)
        feats = {"l": _squash(zl), "s": _squash(zseas), "f": _squash(zf)}
        return raw, feats, xin

    def stuck_evidence(self, x: float, cfg: AnomalyConfig) -> float:
        if x != self.last:
            return 0.0
        run = self.run + 1
        if run < cfg.stuck_min_run:
            return 0.0
        if self.level.mad <= 0.0:
            return 0.0  # a metric that never varied is not "stuck": nothing to compare with
        q = min(max(self.repeat_rate, 0.01), 0.999)
        return -run * math.log10(q) - 3.0  # -3: allow for the many chances to see a run

    def learn(self, ts: float, x: float, raw: dict[str, float], xin: np.ndarray | None, cfg: AnomalyConfig) -> None:
        for c, r in raw.items():
            self.calib[c].update(r)
        same = x == self.last
        self.run = self.run + 1 if same else 0
        self.repeat_rate += 0.01 * ((1.0 if same else 0.0) - self.repeat_rate)
        self.last = x
        lvl = self.level
        zl = lvl.z(x) if lvl.n >= 2 else 0.0
        zl = max(-10.0, min(10.0, zl))
        self.recent.append(zl)
        if len(self.recent) >= cfg.shift_window:
            self.recent.pop(0)
        lim = 4.0 * max(1.2533 * self.seasonal.mad, 0.05 * self.long.scale())
        self.seasonal.update(ts, x, lim)
        lvl.update(x)
        if self.fc is not None:
            xn = self.norm(x)
            if xin is not None:
                xin, pred = xin
                err = xn - pred
                a = max(0.01, 1.0 / (self.n + 1))
                self.fc_err += a * (min(abs(err), 4 * self.fc_err * 1.2533 + 0.1) - self.fc_err)
                self.fc.learn(xin, max(-10.0, min(10.0, xn)))
            self.lagbuf.pop(0)
            self.lagbuf.append(xn)
        self.long.update(x)
        self.n += 1


class DeviceAnomalyModel:
    """One per device; ``metrics`` may be any dict of floats (missing/new metrics are fine)."""

    def __init__(self, config: AnomalyConfig | None = None, **overrides: object) -> None:
        cfg = config or AnomalyConfig()
        for k, v in overrides.items():
            if not hasattr(cfg, k):
                raise TypeError(f"unknown option {k!r}")
            setattr(cfg, k, v)
        self.cfg = cfg
        self.metrics: dict[str, _MetricState] = {}
        self.hst = None
        if cfg.use_hst:
            from river.anomaly import HalfSpaceTrees

            self.hst = HalfSpaceTrees(n_trees=cfg.hst_trees, height=cfg.hst_height, window_size=cfg.hst_window, seed=cfg.seed)
        self.hst_calib = GaussianTail(cfg.calib_alpha, max(cfg.calib_warmup, 2 * cfg.hst_window))
        self.quantile = StreamingQuantile(cfg.quantile, init=cfg.min_threshold, step=0.01)
        self.suppress_left = 0
        self.hst_last = 0.0
        self.silence = SilenceDetector()
        self.n = 0

    # ------------------------------------------------------------------ core step
    def _evaluate(self, ts: float, metrics: dict[str, float]):
        cfg = self.cfg
        per_metric = {}
        feats_all: dict[str, float] = {}
        for name, x in metrics.items():
            if x is None or x != x:  # None / NaN: nothing to score
                continue
            x = float(x)
            st = self.metrics.get(name)
            if st is None:
                st = self.metrics[name] = _MetricState(cfg)
            raw, feats, xin = st.raw(ts, x, cfg)
            per_metric[name] = (st, x, raw, xin)
            for k, v in feats.items():
                feats_all[f"{name}:{k}"] = v
        hst_x = feats_all
        hst_raw = None
        e_h = 0.0
        if self.hst is not None and hst_x:
            if self.n % cfg.hst_every == 0:  # strided: HST is the costliest member
                hst_raw = self.hst.score_one(hst_x) * 10.0
                e_h = self.hst_calib.evidence(hst_raw)
            else:
                e_h = self.hst_last
        best_e, best_m, comps = 0.0, None, {}
        for name, (st, x, raw, xin) in per_metric.items():
            ev = {c: st.calib[c].evidence(r) for c, r in raw.items()}
            ev["stuck"] = st.stuck_evidence(x, cfg)
            ev["hst"] = e_h
            # Sum of the two strongest calibrated evidences: an incident usually moves
            # several detectors at once, noise rarely does (max alone over-alerts).
            a = b = 0.0
            for v in ev.values():
                if v > a:
                    a, b = v, a
                elif v > b:
                    b = v
            e = a + b
            if e > best_e or best_m is None:
                best_e, best_m, comps = e, name, ev
        e = best_e
        score = min(max(e / cfg.e_full, 0.0), 1.0)
        if self.suppress_left > 0:
            score *= cfg.suppress_factor
        thr = max(cfg.min_threshold, self.quantile.value)
        return score, thr, best_m, comps, per_metric, hst_x, hst_raw

    def _learn(self, ts: float, score: float, thr: float, per_metric, hst_x, hst_raw) -> None:
        for st, x, raw, xin in per_metric.values():
            st.learn(ts, x, raw, xin, self.cfg)
        if self.hst is not None and hst_raw is not None:
            self.hst_last = self.hst_calib.evidence(hst_raw)
            self.hst_calib.update(hst_raw)
            self.hst.learn_one(hst_x)
        if self.suppress_left > 0:
            self.suppress_left -= 1
        if score >= thr:
            self.suppress_left = self.cfg.suppress_events
        self.quantile.update(score)
        self.silence.observe(ts)
        self.n += 1

    # ------------------------------------------------------------------ public API
    def score_one(self, ts: float, metrics: dict[str, float]) -> AnomalyResult:
        """Score without learning (state unchanged, except new metrics being registered)."""
        score, thr, m, comps, per_metric, _, _ = self._evaluate(ts, metrics)
        value = per_metric[m][1] if m in per_metric else None
        return AnomalyResult(score, score >= thr, thr, m, value, comps)

    def learn_one(self, ts: float, metrics: dict[str, float]) -> None:
        score, thr, _, _, per_metric, hst_x, hst_raw = self._evaluate(ts, metrics)
        self._learn(ts, score, thr, per_metric, hst_x, hst_raw)

    def score_learn_one(self, ts: float, metrics: dict[str, float]) -> AnomalyResult:
        """Prequential step: the result is computed before the model sees the reading."""
        score, thr, m, comps, per_metric, hst_x, hst_raw = self._evaluate(ts, metrics)
        self._learn(ts, score, thr, per_metric, hst_x, hst_raw)
        value = per_metric[m][1] if m in per_metric else None
        return AnomalyResult(score, score >= thr, thr, m, value, comps)

    def score_learn_many(self, ts: np.ndarray, metrics: dict[str, np.ndarray]) -> BatchResult:
        """Prequential over a batch of events (same results as calling ``score_learn_one`` in order)."""
        ts_l = np.asarray(ts, dtype=float).tolist()
        names = list(metrics)
        cols = [np.asarray(metrics[n], dtype=float).tolist() for n in names]
        n = len(ts_l)
        scores = np.empty(n)
        thrs = np.empty(n)
        which: list[str | None] = [None] * n
        for i in range(n):
            row = {nm: col[i] for nm, col in zip(names, cols)}
            score, thr, m, _, per_metric, hst_x, hst_raw = self._evaluate(ts_l[i], row)
            self._learn(ts_l[i], score, thr, per_metric, hst_x, hst_raw)
            scores[i], thrs[i], which[i] = score, thr, m
        return BatchResult(scores, scores >= thrs, thrs, which)
