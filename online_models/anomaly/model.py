"""Per-device streaming anomaly ensemble, vectorised over blocks of readings (score first, then learn).

Ensemble, per metric:
  * ``level``    robust EWMA/MAD z-score of the value (spikes, level shifts);
  * ``shift``    mean of the last few signed level z-scores (sustained drifts);
  * ``drift``    two-sided CUSUM of the reading against the *slow* baseline in units of the
                 short-term noise (``drift_k``: reference, ``drift_clip``: per-row cap): a slow
                 drift or a level shift keeps accumulating here while the fast level (and the
                 ``level``/``shift`` scores against it) has already adapted to it, so a change is
                 flagged before it is learned as the new normal (a cold room warming after a
                 compressor failure; NAB's machine/ambient temperature drifts);
  * ``seasonal`` z-score against a daily time-of-day profile (anomalies *within*
                 the normal range, e.g. a missing daily peak);
  * ``forecast`` error of a small PyTorch MLP forecaster (dynamics the statistics miss);
  * ``weekly``   (optional, ``use_weekly``; off by default) z-score against an hour-of-week
                 profile once the metric has two weeks of history (holidays, weekday patterns;
                 on NAB it catches 3 more nyc_taxi windows only below the alert level);
  * ``stuck``    run length of identical readings vs the metric's own repeat rate;
per device: ``hst`` River HalfSpaceTrees over the squashed (scaled to [0, 1])
z-scores of all metrics (multivariate: unusual *combinations*).

Every component's raw score is calibrated against its own history on this
series into evidence ``E = -log10(tail probability)`` (:class:`TailCalibrator`
logic, vectorised; ``drift`` with an exponential tail, see the config), so
components and devices are comparable without per-file tuning. Per metric the
two strongest evidences are summed (an incident moves several detectors at once,
noise rarely does; evidences with one common cause count once: see ``_run_block``), the device
evidence is the max over metrics, minus ``log10(level_interval_s / interval)``
for a device reading every ``interval`` seconds (the alert level is a false-alarm
rate per device-hour, not per reading), and ``score = E / e_full`` in [0, 1].

Alerting: ``is_anomaly = score >= min_threshold`` (a fixed evidence level,
``L = min_threshold * e_full`` ~ 5 decades at one reading per 5 minutes); a crossing short of ``L +
confirm_extreme`` needs its neighbour row at ``confirm_frac * L`` (see the config). After an alert the score is damped
(``suppress_factor``) for ``suppress_events`` readings: one incident, one alert (``suppress_pass``: on a
device reading faster than ``level_interval_s``, a new crossing that much stronger than the alert alerts).
The suppression is keyed to the same fixed level as ``is_anomaly``, so the
alert stream is exactly the rows where the (suppressed) score crosses it.

Alert confidence: below the level ``score = E / e_full``; at or above it the score
ranks the alert by ``E - L - burst_penalty * log10(1 + b)``, where ``b`` is the
device's decayed count (half-life ``burst_half_life`` rows) of recent incidents
(crossings of ``L`` more than ``burst_gap`` rows apart): ``score = (L + softplus(.)) / e_full``,
so every crossing is still an alert (score >= min_threshold) but a device that keeps
crossing the level -- a bursty/noisy series -- gets alerts just above the level while
a quiet device's alerts score higher. A stricter consumer threshold (e.g. NAB's
reward-low-FP profile) therefore drops the alerts of bursty devices first.

Speed: the state of all metrics of a device lives in small NumPy arrays and
readings are processed in blocks of up to ``batch_max`` rows: every row of a
block is scored against the state at the start of the block (still strictly
prequential: no row sees itself or later rows), then the block is learned with
closed-form EWMA recursions (robust clipping limits frozen for the block). The
forecaster predicts a block in one matrix product and trains every
``train_every`` samples; HalfSpaceTrees scores/learns every ``hst_every``-th row
(its evidence is held in between). ``score_learn_one`` is a block of one row, so
one-by-one and batch results differ only through block boundaries. The arithmetic
of a block runs in a few compiled calls (`model_kernels`: ~200 NumPy calls on arrays of
a few elements cost more in call overhead than in arithmetic), bit for bit the NumPy
formulas they replaced; NumPy still takes the logarithms, tanh, sin/cos and the forecaster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from online_models.anomaly.detectors import SilenceDetector
from online_models.anomaly.forecaster import OnlineMLPForecaster
from online_models.anomaly.model_kernels import (evidence, evidence_args, forecast_scores, fuse_alert, learn_block,
                                                 score_block)
from online_models.anomaly.stats import GaussianTail

COMPONENTS = ("level", "shift", "seasonal", "forecast", "weekly", "drift", "stuck", "hst")
_CAL = 5  # components calibrated by histogram: level, shift, seasonal, forecast, weekly
_WEEK = 604800.0


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

    max_metrics: int = 32  # metric names one model tracks (bounded state); the schema allows 32 per reading
    level_alpha: float = 0.02
    long_alpha: float = 0.002
    # a second fast level that follows a ramp (Holt: trend learned at ramp_trend_alpha; 0: off) scores `level` where
    # its one-step error is ramp_margin times under the plain level's: a spike on a charging battery is then measured
    # against the readings' noise, not against the plain level's lag behind the ramp (margin chosen on tuning data:
    # at 1 the plain level's series on NAB lose a little, at 2 and above none changes)
    ramp_trend_alpha: float = 0.02
    ramp_margin: float = 2.0
    shift_window: int = 8
    # drift: two-sided CUSUM of the reading against the slow baseline, in units of the short-term
    # noise (reference k = half the smallest shift worth finding, in noise sigmas; z clipped so one
    # spike cannot fill it)
    drift_k: float = 1.0
    drift_clip: float = 4.0
    # its calibration: P(S > 0) and the mean of positive S (updates capped at drift_cap x that mean)
    drift_half_life: float = 10000.0
    drift_cap: float = 30.0
    # its upper tail, from the point where the exponential reaches drift_tail_e decades: exponential with the mean
    # excess of past *ended* excursions beyond that point (EWMA, weight >= drift_tail_alpha), when heavier; a
    # recurring bounded excursion (a cold room's door opening) is learned, an ongoing drift never teaches itself
    drift_tail_e: float = 3.0
    drift_tail_alpha: float = 0.1
    # spatial anomaly (Numenta HTM's NAB detector): a reading outside the range the metric has shown so far, by more
    # than spatial_tol of that range, has at least spatial_e decades of evidence, whatever the calibrators say (on a
    # short series they cannot resolve a first-ever excursion's tail). Like all evidence it then takes the reading
    # interval's correction (level_interval_s): at 5 minutes it alarms alone, at 1 s (4.5 decades) it does not, since
    # a fast device's noise sets new records far more often per hour. <= 0 turns it off
    spatial_tol: float = 0.05
    spatial_e: float = 7.0
    seasonal_bins: int = 48
    seasonal_alpha: float = 0.15
    use_weekly: bool = False
    weekly_bins: int = 168  # hour of week
    weekly_alpha: float = 0.1
    weekly_min_age: float = 2 * _WEEK  # seconds of history before the weekly profile is used
    calib_half_life: float = 3000.0
    calib_warmup: int = 60
    calib_bins: int = 48
    calib_bins_per_unit: float = 4.0
    # tail beyond the largest value seen: (1 + z)^-calib_power; steep enough that a spike's level evidence
    # speaks for itself (forecast, in its family, no longer confirms it)
    calib_power: float = 5.0
    calib_alpha: float = 0.002  # HST raw-score calibration (Gaussian on log1p)
    lags: int = 8
    hidden: int = 16
    train_every: int = 256
    epochs: int = 2
    use_forecaster: bool = True
    use_hst: bool = True
    hst_every: int = 4
    hst_trees: int = 5
    hst_height: int = 5
    hst_window: int = 250
    e_full: float = 12.0
    min_threshold: float = 0.4  # alert level on the score (evidence min_threshold * e_full)
    # ... for a device reading every level_interval_s seconds; the evidence needed per reading grows by
    # log10(level_interval_s / interval) for a faster device, so alerts per device-hour stay comparable
    level_interval_s: float = 300.0
    # a crossing of the alert level by less than confirm_extreme decades alerts only with a neighbour: two
    # consecutive rows, one at the level and the other at >= confirm_frac of it (the alert is the second row). A
    # lone reading at the level is what a series does routinely (a daily cron spike, one noisy sample); an incident
    # moves more than one reading, or moves one far. A device reading faster than level_interval_s already pays
    # log10(level_interval_s / interval) decades a reading for its many chances at a lone crossing (the alert
    # level's interval correction); that counts toward confirm_extreme. State: the previous row's evidence
    confirm_frac: float = 0.5
    confirm_extreme: float = 2.0
    # re-alerting within an incident: when a suppression ends while the device is still crossing the level (a
    # crossing within the last suppress_events rows), a crossing alerts again only at >= rearm_frac of the evidence
    # of the alert that opened it; else it scores just below the level. An incident still on at its alert's strength
    # (or a second one, stronger) is news; one settling at a lower level is not (ARTime masks re-detections after
    # an anomaly unless less similar than rearm_frac = 0.9 x the last anomaly's similarity; 0 turns it off).
    # State: the last alert's evidence
    rearm_frac: float = 0.9
    # on a device reading faster than level_interval_s, a crossing that starts inside a suppression (the row before
    # was under the level) at >= suppress_pass x the evidence of the alert that opened it is let through (0: off).
    # At 1 Hz the suppression is minutes long and a new crossing that much stronger is another incident more often
    # than the first one growing; on NAB, at 5 minutes a row, letting stronger crossings through cost 4-12 points, so
    # slow devices keep the suppression. 1/0.9: rearm_frac's ARTime constant the other way round (ARTime lets a
    # detection through its mask at a similarity below 0.9 x the last anomaly's). docs/anomaly-detection.md,
    # thirteenth pass (chosen on seeds 7,1,2; confirmed on the unseen seeds 5,6,8,9)
    suppress_pass: float = 1 / 0.9
    suppress_events: int = 150
    suppress_factor: float = 0.0
    # alert confidence: an alert's score above the alert level is its evidence minus
    # burst_penalty * log10(1 + recent incidents) (softplus-floored at the level), so alerts from
    # devices that keep crossing the level rank below those from quiet devices
    burst_penalty: float = 4.0
    burst_half_life: float = 5000.0  # rows
    burst_gap: int = 40  # crossings closer than this (rows) are one incident
    burst_softness: float = 1.0
    stuck_min_run: int = 5
    batch_max: int = 32  # rows per block scored against one frozen state
    seed: int = 0


def make_config(config: AnomalyConfig | None = None, **overrides: object) -> AnomalyConfig:
    """A copy of ``config`` (default: the defaults) with ``overrides``; refuses unknown options."""
    cfg = AnomalyConfig(**vars(config)) if config is not None else AnomalyConfig()
    for k, v in overrides.items():
        if not hasattr(cfg, k):
            raise TypeError(f"unknown option {k!r}")
        setattr(cfg, k, v)
    if not 1 <= cfg.batch_max <= 64:
        raise ValueError("batch_max must be in [1, 64]")
    if not 0.0 <= cfg.ramp_trend_alpha < 1.0 or not cfg.ramp_margin > 0:
        raise ValueError("ramp_trend_alpha must be in [0, 1) and ramp_margin above 0")
    return cfg


class DeviceAnomalyModel:
    """One per device; ``metrics`` may be any dict of floats (missing/new metrics are fine)."""

    def __init__(self, config: AnomalyConfig | None = None, **overrides: object) -> None:
        self.cfg = cfg = make_config(config, **overrides)
        self.names: list[str] = []
        self.index: dict[str, int] = {}
        z = np.zeros(0)
        # robust levels: fast (spikes) and long (normalisation); seasonal profile
        self.lv_mean, self.lv_mad, self.lv_n = z.copy(), z.copy(), z.copy()
        self.lg_mean, self.lg_mad, self.lg_n = z.copy(), z.copy(), z.copy()
        self.recent = np.zeros((cfg.shift_window - 1, 0))
        self.cu_pos, self.cu_neg = z.copy(), z.copy()
        self.cu_ppos, self.cu_scale = z.copy(), z.copy()  # drift calibration: P(S > 0), mean positive S
        # ... its upper tail: running peak of the current excursion, mean excess of ended ones, their count
        self.cu_peak, self.cu_beta, self.cu_nexc = z.copy(), z.copy(), z.copy()
        self.cu_anc = z.copy()  # the scale an excursion beyond the tail point started under (0: none; -1: spent)
        self.sp_lo, self.sp_hi = z.copy(), z.copy()  # range of the readings so far (NaN: none yet)
        # the ramp level (`ramp_learn`): level, spread around level + trend, trend; spread of row-to-row differences
        self.rl_mean, self.rl_mad, self.rl_slope, self.df_mad = z.copy(), z.copy(), z.copy(), z.copy()
        self.s_means = np.zeros((cfg.seasonal_bins, 0))
        self.s_counts = np.zeros((cfg.seasonal_bins, 0))
        self.s_mad, self.s_n = z.copy(), z.copy()
        wb = cfg.weekly_bins if cfg.use_weekly else 0
        self.w_means = np.zeros((wb, 0))
        self.w_counts = np.zeros((wb, 0))
        self.w_mad, self.w_n = z.copy(), z.copy()
        self.t_first = z.copy()
        # forecaster, stuck detector
        self.lagbuf = np.zeros((cfg.lags, 0))
        self.fc: list[OnlineMLPForecaster] = []
        self.fc_err = z.copy()
        self.last, self.run, self.repeat_rate = z.copy(), z.copy(), z.copy()
        # calibrators: decayed histograms per metric and component
        self.c_counts = np.zeros((0, _CAL, cfg.calib_bins))
        self.c_total = np.zeros((0, _CAL))
        self.c_n = np.zeros((0, _CAL))
        self.c_weight = 1.0
        self.c_decay = 0.5 ** (-1.0 / cfg.calib_half_life)
        self.hst = None
        if cfg.use_hst:
            from river.anomaly import HalfSpaceTrees

            self.hst = HalfSpaceTrees(n_trees=cfg.hst_trees, height=cfg.hst_height, window_size=cfg.hst_window, seed=cfg.seed)
        self.hst_calib = GaussianTail(cfg.calib_alpha, max(cfg.calib_warmup, 2 * cfg.hst_window))
        self.hst_last = 0.0
        self.suppress_left = 0
        # incidents: decayed count of alert-level crossings more than ``burst_gap`` rows apart
        self.burst = 0.0
        self.since_cross = 1 << 30
        self.e_prev = 0.0  # the previous row's evidence (confirm_frac: a crossing needs a neighbour)
        self.e_alert = 0.0  # the last alert's evidence (rearm_frac)
        self.burst_decay = 0.5 ** (1.0 / cfg.burst_half_life)
        self.silence = SilenceDetector()
        self.n = 0
        self.ignored_metrics = 0

    # ------------------------------------------------------------------ state management
    def _add_metric(self, name: str) -> None:
        cfg = self.cfg
        self.index[name] = len(self.names)
        self.names.append(name)

        def grow(a: np.ndarray, fill: float = 0.0) -> np.ndarray:
            col = np.full(a.shape[:-1] + (1,), fill) if a.ndim > 1 else np.array([fill])
            return np.concatenate([a, col], axis=-1)

        for attr in ("lv_mean", "lv_mad", "lv_n", "lg_mean", "lg_mad", "lg_n", "recent", "cu_pos", "cu_neg",
                     "cu_peak", "cu_beta", "cu_nexc", "cu_anc", "s_means", "rl_mean", "rl_mad", "rl_slope", "df_mad",
                     "s_counts", "s_mad", "s_n", "w_means", "w_counts", "w_mad", "w_n", "lagbuf", "fc_err", "run"):
            setattr(self, attr, grow(getattr(self, attr)))
        self.last = grow(self.last, math.nan)
        self.t_first = grow(self.t_first, math.nan)
        self.sp_lo = grow(self.sp_lo, math.nan)
        self.sp_hi = grow(self.sp_hi, math.nan)
        self.repeat_rate = grow(self.repeat_rate, 0.5)  # prior: P(reading == previous)
        self.cu_ppos = grow(self.cu_ppos, 0.5)  # priors: P(S > 0), mean positive S (noise sigmas)
        self.cu_scale = grow(self.cu_scale, 1.0)
        self.c_counts = np.concatenate([self.c_counts, np.zeros((1, _CAL, cfg.calib_bins))])
        self.c_total = np.concatenate([self.c_total, np.zeros((1, _CAL))])
        self.c_n = np.concatenate([self.c_n, np.zeros((1, _CAL))])
        if cfg.use_forecaster:
            self.fc.append(OnlineMLPForecaster(cfg.lags, cfg.hidden, train_every=cfg.train_every,
                                               epochs=cfg.epochs, seed=cfg.seed))

    def _matrix(self, metrics: dict[str, object], n: int) -> np.ndarray:
        """Rows x known metrics. Names past ``cfg.max_metrics`` are not modelled (counted in ``ignored_metrics``):
        each name costs a forecaster and calibrators, so one device must not grow its state without bound."""
        for name in metrics:
            if name not in self.index:
                if len(self.names) >= self.cfg.max_metrics:
                    self.ignored_metrics += 1
                    continue
                self._add_metric(name)
        x = np.full((n, len(self.names)), np.nan)
        for name, col in metrics.items():
            j = self.index.get(name)
            if j is not None:
                x[:, j] = np.asarray(col, dtype=float).reshape(n) if n else []
        return x

    # ------------------------------------------------------------------ block scoring (pure)
    def _score_block(self, ts: np.ndarray, x: np.ndarray):
        """Evidence per row/metric/component for a block, against the current (frozen) state: the raw scores in
        one compiled call (`model_kernels.score_block`), the forecasters' predictions, then the calibrators."""
        cfg = self.cfg
        b_rows, m = x.shape
        ang = (ts % 86400.0) / 86400.0 * (2.0 * math.pi)
        e0 = -np.log10(np.maximum(self.cu_ppos, 1e-6))
        lq = np.log10(np.clip(self.repeat_rate, 0.01, 0.999))
        cu_pos, cu_neg, anc = np.empty((b_rows, m)), np.empty((b_rows, m)), self.cu_anc.copy()
        (valid, xf, zl, zlc, raw, avail, bins, wbins, xn, xin, cus, e_drift, tail_s0, mu, zseas, same, run, stuck,
         spatial) = score_block(
            ts, x, self.lv_mean, self.lv_mad, self.lv_n, self.lg_mean, self.lg_mad, self.lg_n, self.recent,
            cfg.shift_window, cfg.ramp_trend_alpha, cfg.ramp_margin, self.rl_mean, self.rl_slope, self.rl_mad,
            self.df_mad, cfg.drift_k, cfg.drift_clip, self.cu_pos, self.cu_neg, self.cu_scale, self.cu_beta,
            self.cu_nexc, self.cu_anc, self.suppress_left > 0, e0, cfg.drift_tail_e, cfg.long_alpha, cfg.calib_warmup,
            self.s_means, self.s_counts, self.s_mad, cfg.use_weekly and m > 0, self.w_means, self.w_counts, self.w_mad,
            self.t_first, cfg.weekly_min_age, cfg.weekly_bins or 1, cfg.use_forecaster, self.lagbuf, np.sin(ang),
            np.cos(ang), self.last, self.run, lq, cfg.stuck_min_run, self.sp_lo, self.sp_hi, cfg.spatial_tol, cu_pos,
            cu_neg, anc)
        # the forecasters' predictions (NumPy, float32), then their errors as scores
        use_fc = cfg.use_forecaster and b_rows > 0
        has_fc = (self.lg_n > cfg.lags) & use_fc
        pred = np.zeros((m, b_rows))
        for j in np.flatnonzero(has_fc).tolist():
            pred[j] = self.fc[j].predict_many(xin[j])
        errs, zq = forecast_scores(pred, has_fc, valid, xn, self.fc_err, raw, avail, zl, zseas)
        # calibrated evidence, -log10 of each raw score's tail probability on its own history (`TailCalibrator`)
        u = np.log1p(np.maximum(raw, 0.0))
        cal_bins, arg, arg_top = evidence_args(u, self.c_counts, self.c_total, cfg.calib_bins_per_unit)
        ev = evidence(raw, u, cal_bins, np.log10(arg), np.log10(arg_top), self.c_counts, self.c_total, self.c_n,
                      cfg.calib_bins_per_unit, cfg.calib_power, cfg.calib_warmup, avail, valid, e_drift, stuck,
                      len(COMPONENTS))
        feats = 0.5 + 0.5 * np.tanh(zq)  # level, seasonal and forecast z scaled to [0, 1] for HST
        return ev, dict(valid=valid, xf=xf, zlc=zlc, raw=raw, avail=avail, bins=bins, wbins=wbins, xn=xn, xin=xin,
                        has_fc=has_fc, errs=errs,
                        cu_pos=cu_pos, cu_neg=cu_neg, cus=cus, cu_anc=anc, same=same, run=run, feats=feats,
                        spatial=spatial, tail_s0=tail_s0, mu=mu,
                        cal_bins=cal_bins)

    def _hst_block(self, ev: np.ndarray, aux: dict, learn: bool) -> np.ndarray:
        """HST evidence per row (held between the strided evaluations); learns when ``learn``."""
        b_rows = ev.shape[0]
        out = np.empty(b_rows)
        if self.hst is None or not self.names:
            out[:] = 0.0
            return out
        every = self.cfg.hst_every
        feats, valid = aux["feats"], aux["valid"]
        keys = [(f"{nm}:l", f"{nm}:s", f"{nm}:f") for nm in self.names]
        last = self.hst_last
        calib = self.hst_calib
        for i in range(b_rows):
            if (self.n + i) % every == 0:
                fr = feats[i].tolist()
                xd = {}
                for j, ks in enumerate(keys):
                    if valid[i, j]:
                        xd[ks[0]], xd[ks[1]], xd[ks[2]] = fr[j]
                if xd:
                    r = self.hst.score_one(xd) * 10.0
                    last = calib.evidence(r)
                    if learn:
                        calib.update(r)
                        self.hst.learn_one(xd)
            out[i] = last
        if learn:
            self.hst_last = last
        return out

    # ------------------------------------------------------------------ block learning
    def _learn_block(self, ts: np.ndarray, x: np.ndarray, aux: dict) -> None:
        """Learn a scored block: the forecasters here, every other component in one compiled call (`model_kernels`)."""
        cfg = self.cfg
        valid, xf = aux["valid"], aux["xf"]
        b_rows = len(ts)
        w1 = cfg.shift_window - 1
        if w1 > 0:
            self.recent = np.concatenate([self.recent, aux["zlc"]])[-w1:]
        self.cu_pos, self.cu_neg = aux["cu_pos"][-1], aux["cu_neg"][-1]
        self.cu_anc = aux["cu_anc"]
        use_fc = cfg.use_forecaster and b_rows > 0
        act = aux["has_fc"] & valid.any(axis=0)  # metrics whose forecaster learns from this block
        xin, xn = aux["xin"], aux["xn"]
        for j in np.flatnonzero(act).tolist():
            vj = valid[:, j]
            self.fc[j].learn_many(xin[j][vj], np.clip(xn[vj, j], -10.0, 10.0))
        wts = self.c_weight * self.c_decay ** np.arange(1, b_rows + 1)
        learn_block(ts, x, xf, valid, self.lv_n.copy(), self.lv_mean, self.lv_mad, self.lv_n, self.lg_mean, self.lg_mad,
                    self.lg_n, cfg.level_alpha, cfg.long_alpha, aux["cus"], aux["tail_s0"], aux["mu"], self.cu_ppos,
                    self.cu_scale, self.cu_peak, self.cu_beta, self.cu_nexc, math.log(2.0) / cfg.drift_half_life,
                    cfg.drift_cap, cfg.drift_tail_alpha, self.sp_lo, self.sp_hi, aux["bins"], self.s_means,
                    self.s_counts, self.s_mad, self.s_n, cfg.seasonal_alpha, cfg.use_weekly, aux["wbins"], self.w_means,
                    self.w_counts, self.w_mad, self.w_n, cfg.weekly_alpha, self.t_first, use_fc, act, aux["errs"],
                    self.fc_err, aux["xn"], self.lagbuf, cfg.ramp_trend_alpha, self.rl_mean, self.rl_slope,
                    self.rl_mad, self.df_mad, aux["same"], aux["run"], self.last, self.run, self.repeat_rate,
                    aux["cal_bins"], aux["avail"], cfg.calib_warmup, wts, self.c_counts, self.c_total, self.c_n)
        self.c_weight = float(wts[-1])
        if self.c_weight > 1e50:
            s = 1.0 / self.c_weight
            self.c_counts *= s
            self.c_total *= s
            self.c_weight = 1.0

    def _run_block(self, ts: np.ndarray, x: np.ndarray, learn: bool):
        """Score a block (evidence, fusion, the alert loop: `model_kernels.fuse_alert`), then learn it if ``learn``.

        Fusion (`fuse_alert`): per metric the sum of the two strongest evidences, per row the strongest metric. Two
        evidences may confirm each other only if no single cause moves both. One outlying reading moves ``level``,
        ``shift`` and ``forecast`` (the reading against the short-term expectation); a moved baseline moves
        ``level``, ``shift`` and ``drift`` (the value against the fast baseline, the fast one over the last few
        rows, the slow one). So of these four only ``drift`` + ``forecast`` may be summed: one outlier adds at most
        ``drift_clip - drift_k`` noise units to the CUSUM, and a slow ramp that the CUSUM sees is no outlier to the
        level; the other components (seasonal, weekly, stuck, hst) pair with anything."""
        cfg = self.cfg
        ev, aux = self._score_block(ts, x)
        hst = self._hst_block(ev, aux, learn)
        # the alert level is a false-alarm *rate in time*: a device reading every ``iv`` seconds needs
        # log10(level_interval_s / iv) more decades per reading than one reading every level_interval_s
        iv = self.silence.interval if self.silence.n >= 2 else 0.0
        add, paid = math.nan, 0.0  # paid: decades a faster device already pays per reading (toward confirm_extreme)
        if iv > 0.0:
            add = math.log10(iv / cfg.level_interval_s)
            paid = max(-add, 0.0)
        thr = cfg.min_threshold
        level = thr * cfg.e_full  # the alert level, in decades of evidence
        b_rows = len(ts)
        out, best = np.empty(b_rows), np.empty(b_rows, np.int64)
        left, burst, since, prev, e_alert = fuse_alert(
            ev, hst, aux["valid"], aux["spatial"], cfg.spatial_e, add, paid, level, cfg.confirm_frac * level,
            level + max(cfg.confirm_extreme - paid, 0.0), cfg.e_full, cfg.burst_softness, cfg.burst_penalty,
            cfg.burst_gap, self.burst_decay, cfg.rearm_frac, cfg.suppress_events, cfg.suppress_pass,
            cfg.suppress_factor, cfg.suppress_events, thr, self.suppress_left, self.burst, self.since_cross,
            self.e_prev, self.e_alert, out, best)
        if learn:
            self._learn_block(ts, x, aux)
            self.suppress_left, self.burst, self.since_cross, self.e_prev = left, burst, since, prev
            self.e_alert = e_alert
            for t in ts.tolist():
                self.silence.observe(t)
            self.n += len(ts)
        return out, best, ev, aux

    # ------------------------------------------------------------------ public API
    def _one(self, ts: float, metrics: dict[str, float], learn: bool) -> AnomalyResult:
        clean = {k: v for k, v in metrics.items() if v is not None}
        x = self._matrix(clean, 1)
        scores, best, ev, _ = self._run_block(np.array([float(ts)]), x, learn)
        thr = self.cfg.min_threshold
        j = int(best[0])
        if j < 0 or np.isnan(x[0, j]):
            return AnomalyResult(float(scores[0]), bool(scores[0] >= thr), thr, None, None, {})
        comps = dict(zip(COMPONENTS, ev[0, j].tolist()))
        return AnomalyResult(float(scores[0]), bool(scores[0] >= thr), thr, self.names[j], float(x[0, j]), comps)

    def score_one(self, ts: float, metrics: dict[str, float]) -> AnomalyResult:
        """Score without learning (state unchanged, except new metrics being registered)."""
        return self._one(ts, metrics, learn=False)

    def learn_one(self, ts: float, metrics: dict[str, float]) -> None:
        self._one(ts, metrics, learn=True)

    def score_learn_one(self, ts: float, metrics: dict[str, float]) -> AnomalyResult:
        """Prequential step: the result is computed before the model sees the reading."""
        return self._one(ts, metrics, learn=True)

    def score_learn_many(self, ts: np.ndarray, metrics: dict[str, np.ndarray]) -> BatchResult:
        """Prequential over a batch of events, in blocks of ``batch_max`` rows (each block is scored
        against the state left by the previous blocks, then learned)."""
        ts = np.asarray(ts, dtype=float).reshape(-1)
        n = len(ts)
        x = self._matrix(metrics, n)
        scores = np.empty(n)
        best = np.empty(n, dtype=np.int64)
        step = self.cfg.batch_max
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            s, b, _, _ = self._run_block(ts[lo:hi], x[lo:hi], learn=True)
            scores[lo:hi], best[lo:hi] = s, b
        thr = self.cfg.min_threshold
        names = self.names
        which = [names[j] if j >= 0 else None for j in best.tolist()]
        return BatchResult(scores, scores >= thr, np.full(n, thr), which)
