"""Behavioural tests for the streaming anomaly ensemble (fast, synthetic data)."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from online_models.anomaly import AnomalyResult, DeviceAnomalyModel, RuleSet, SilenceDetector
from online_models.anomaly.state_types import STATE_TYPES
from online_models.anomaly.stats import TailCalibrator, neg_log10_tail
from schemas.state import StateCodec

T0 = 1_700_000_000.0


def _series(n: int, seed: int = 0, period: float = 86400.0, step: float = 300.0):
    rng = np.random.default_rng(seed)
    ts = T0 + np.arange(n) * step
    x = 5.0 + 1.5 * np.sin(2 * math.pi * ts / period) + rng.normal(0, 0.1, n)
    return ts, x


def _run(model: DeviceAnomalyModel, ts, x, name="temperature"):
    return [model.score_learn_one(float(t), {name: float(v)}) for t, v in zip(ts, x)]


@pytest.fixture(scope="module")
def fast_kwargs():
    return {"use_hst": False, "use_forecaster": True, "train_every": 64}


def test_result_shape_and_range(fast_kwargs):
    m = DeviceAnomalyModel(**fast_kwargs)
    ts, x = _series(300)
    res = _run(m, ts, x)
    assert all(isinstance(r, AnomalyResult) for r in res)
    assert all(0.0 <= r.score <= 1.0 for r in res)
    assert res[-1].metric == "temperature" and res[-1].value == pytest.approx(x[-1])
    assert set(res[-1].components) >= {"level", "seasonal", "stuck", "forecast"}


def test_spike_scores_above_threshold_normal_data_does_not(fast_kwargs):
    m = DeviceAnomalyModel(**fast_kwargs)
    ts, x = _series(2000)
    res = m.score_learn_many(ts[:1500], {"temperature": x[:1500]})
    normal_alarms = int(res.is_anomaly[500:].sum())
    assert normal_alarms <= 3  # < 0.3 % of clean readings
    spike = m.score_one(float(ts[1500]), {"temperature": float(x[1500] + 8.0)})
    assert spike.is_anomaly and spike.score >= spike.threshold
    # z ~ 9 against the fast level (which lags the daily sine, MAD ~ 1): ~1.6 % of clean rows reach z 3.5, and
    # the power-law tail beyond gives ~2.9 decades (above 3 only while start-up z-scores of hundreds sat in the tail)
    assert spike.components["level"] > 2.5


def test_level_shift_detected(fast_kwargs):
    m = DeviceAnomalyModel(**fast_kwargs)
    ts, x = _series(2000, seed=1)
    x = x.copy()
    x[1500:] += 3.0
    res = m.score_learn_many(ts, {"temperature": x})
    assert not res.is_anomaly[1000:1500].any()
    assert res.is_anomaly[1500:1510].any()


def test_slow_drift_is_flagged_before_it_is_learned_as_normal(fast_kwargs):
    """A ramp of 0.1 noise sigma per reading (a cold room warming after a compressor failure): the CUSUM
    against the slow baseline flags it within ~2 sigma of drift; the level/shift scores alone need ~3.3 sigma
    (they judge the value against a fast level that follows the ramp)."""
    rng = np.random.default_rng(3)
    n = 3000
    ts = T0 + np.arange(n) * 60.0
    x = 4.0 + rng.normal(0, 0.1, n)
    x[2500:] += 0.01 * np.arange(n - 2500)
    m = DeviceAnomalyModel(**fast_kwargs)
    res = m.score_learn_many(ts[:2526], {"temperature": x[:2526]})
    assert res.is_anomaly[500:2500].sum() <= 2
    assert res.is_anomaly[2500:2526].any()
    assert m.score_one(float(ts[2526]), {"temperature": float(x[2526])}).components["drift"] > 3.0
    # the same model without the drift component (reference far above any drift) is later
    m2 = DeviceAnomalyModel(drift_k=1e9, **fast_kwargs)
    assert not m2.score_learn_many(ts[:2526], {"temperature": x[:2526]}).is_anomaly[2500:].any()


def _cold_room(seed: int):
    """Two hours at 1 Hz: noise 0.08 °C, short door openings (+1.2 °C for 10-40 s) from 25 min, then from
    90 min a compressor failure warming the room 0.25 °C/min (the 8 °C limit would fire after 16 min)."""
    rng = np.random.default_rng(seed)
    n = 2 * 3600
    ts = T0 + np.arange(n) * 1.0
    x = 4.0 + rng.normal(0, 0.08, n)
    door = np.zeros(n, bool)
    t = 1500
    while t < 5400:
        length = int(rng.uniform(10, 40))
        door[t:t + length] = True
        t += length + int(rng.exponential(500))
    x[door] += 1.2
    x[5400:] += 0.25 / 60 * np.arange(n - 5400)
    return ts, x, np.flatnonzero(door[1:] & ~door[:-1]) + 1


@pytest.mark.parametrize("seed", [11, 13])
def test_recurring_door_openings_are_learned_but_a_drift_after_them_is_flagged(fast_kwargs, seed):
    """The drift tail beyond 3 decades is learned from *ended* excursions: after the first door opening
    (a genuine surprise) the next ones are ordinary, while the compressor's ramp, which never ends, is
    flagged minutes before the limit rule. With the body's exponential alone most openings alarm."""
    ts, x, starts = _cold_room(seed)

    def alarms(**kw):
        m = DeviceAnomalyModel(**fast_kwargs, **kw)
        return np.concatenate([m.score_learn_many(ts[lo:lo + 20], {"temperature": x[lo:lo + 20]}).is_anomaly
                               for lo in range(0, len(ts), 20)])

    a = alarms()
    door_alarms = [bool(a[s:s + 200].any()) for s in starts]
    assert len(starts) >= 5 and door_alarms[0] and not any(door_alarms[1:])
    assert all(any(s <= i < s + 200 for s in starts) for i in np.flatnonzero(a[750:5400]) + 750)  # only doors
    assert a[5400:5400 + 600].any()  # within 10 min of the failure (the rule: 16 min)
    one_tail = alarms(drift_tail_e=1e9)
    assert sum(bool(one_tail[s:s + 200].any()) for s in starts[1:]) >= 3


def test_alert_level_is_a_rate_per_device_hour(fast_kwargs):
    """Noise read once a second: the level that suits one reading per 5 minutes would alarm every few
    minutes per hour; scaled by the reading interval, three clean hours give (almost) no alarm."""
    rng = np.random.default_rng(5)
    n = 4 * 3600
    ts = T0 + np.arange(n) * 1.0
    x = {"a": rng.normal(0.3, 0.02, n), "b": 45.0 + rng.normal(0, 0.3, n)}

    def alarms(**kw):
        m = DeviceAnomalyModel(**fast_kwargs, **kw)
        return sum(int(m.score_learn_many(ts[lo:lo + 20], {k: v[lo:lo + 20] for k, v in x.items()}).is_anomaly[
            max(0, 3600 - lo):].sum()) for lo in range(0, n, 20))

    assert alarms() <= 1
    assert alarms(level_interval_s=1.0) >= 6  # per-reading level: the same noise alarms


@pytest.mark.parametrize("step", [300.0, 1.0])
def test_a_reading_outside_the_range_seen_so_far_alarms_at_a_slow_rate(fast_kwargs, step):
    """Uniform noise on [0, 10]: 11 is only 1.9 robust sigmas from the level (the calibrators call it ordinary), but
    it is 10 % beyond every reading so far. At one reading per 5 minutes that alone is an alarm (the spatial
    anomaly); at 1 Hz it is not, as noise sets such records far more often per hour; a reading inside is neither."""
    rng = np.random.default_rng(3)
    ts = T0 + np.arange(1500) * step
    x = rng.uniform(0.0, 10.0, 1500)

    def after(**kw):
        m = DeviceAnomalyModel(**fast_kwargs, **kw)
        m.score_learn_many(ts, {"v": x})
        return m.score_one(float(ts[-1] + step), {"v": 11.0}), m.score_one(float(ts[-1] + step), {"v": 9.9})

    out, inside = after()
    assert out.is_anomaly == (step == 300.0)
    assert not inside.is_anomaly
    assert not after(spatial_tol=0.0)[0].is_anomaly


def test_a_spike_on_a_steady_ramp_is_measured_against_the_noise_not_the_lag() -> None:
    """A battery charging at 0.04 a second, read every second: the plain level lags the ramp by slope / level_alpha
    (2 units) and its spread follows that lag, so a +15 spike reaches ~4.5 decades, under a 1 Hz device's alert level.
    The ramp level (Holt) follows the ramp, its spread is the noise (0.08), and it speaks for `level` there: the spike
    alerts, and nothing else on the ramp does. With `ramp_trend_alpha` 0 (the plain level only) the spike is missed."""
    rng = np.random.default_rng(3)
    n = 2400
    ts = T0 + np.arange(n, dtype=float)
    x = 20 + 0.04 * np.arange(n) + rng.normal(0, 0.08, n)
    x[2000] += 15

    def alerts(**kw):
        m = DeviceAnomalyModel(**kw)
        return np.concatenate([m.score_learn_many(ts[s:s + 32], {"battery": x[s:s + 32]}).is_anomaly
                               for s in range(0, n, 32)])

    assert np.flatnonzero(alerts()).tolist() == [2000]
    assert not alerts(ramp_trend_alpha=0.0).any()


def test_stuck_sensor_detected(fast_kwargs):
    m = DeviceAnomalyModel(**fast_kwargs)
    ts, x = _series(1600, seed=2)
    x = x.copy()
    x[1500:] = x[1499]  # sensor freezes at its last value
    res = m.score_learn_many(ts[:1540], {"temperature": x[:1540]})
    assert m.score_one(float(ts[1540]), {"temperature": float(x[1540])}).components["stuck"] > 5.0
    assert res.is_anomaly[1500:].any()
    # A series that was always constant is not "stuck": nothing to compare with.
    m2 = DeviceAnomalyModel(**fast_kwargs)
    res2 = m2.score_learn_many(ts[:500], {"temperature": np.full(500, 45.0)})
    assert not res2.is_anomaly.any()


def test_alert_confidence_drops_for_a_device_that_keeps_alerting(fast_kwargs):
    """Every confirmed crossing of the fixed evidence level is still an alert, but a device with many recent
    incidents gets lower alert scores (closer to the level) than a quiet one with the same incident (two readings:
    a lone reading short of the extreme needs its neighbour, `confirm_frac`)."""
    ts, x = _series(3000, seed=9)
    noisy = x.copy()
    for i in range(600, 2500, 200):  # an incident every 200 rows (the last one 500 rows before the test incident)
        noisy[i:i + 2] += 8.0
    quiet = x.copy()
    for y in (noisy, quiet):
        y[2900:2902] += 8.0
    rn = DeviceAnomalyModel(**fast_kwargs).score_learn_many(ts, {"v": noisy})
    rq = DeviceAnomalyModel(**fast_kwargs).score_learn_many(ts, {"v": quiet})
    assert rn.is_anomaly[2900:2902].any() and rq.is_anomaly[2900:2902].any()
    assert rn.is_anomaly[600:2500].sum() >= 5  # the repeated incidents alert
    assert 0.4 <= rn.scores[2900:2902].max() < rq.scores[2900:2902].max()
    assert (rn.is_anomaly == (rn.scores >= rn.thresholds)).all()


def test_weekly_profile_option(fast_kwargs):
    """Optional hour-of-week profile: off by default, reported as a component when on."""
    m = DeviceAnomalyModel(use_weekly=True, **fast_kwargs)
    ts, x = _series(4000, seed=10, step=1800.0)  # ~12 weeks of half-hourly data
    x = x + 2.0 * ((ts // 86400) % 7 >= 5)  # weekends are higher
    m.score_learn_many(ts, {"v": x})
    r = m.score_one(float(ts[-1] + 1800), {"v": float(x[-1])})
    assert "weekly" in r.components and 0.0 <= r.score <= 1.0
    assert DeviceAnomalyModel(**fast_kwargs).w_means.shape[0] == 0


def test_score_one_does_not_learn(fast_kwargs):
    m = DeviceAnomalyModel(**fast_kwargs)
    ts, x = _series(400, seed=3)
    _run(m, ts, x)
    before = pickle.dumps(m)
    m.score_one(float(ts[-1] + 300), {"temperature": 99.0})
    assert pickle.dumps(m) == before


def test_state_format_round_trip_gives_identical_scores():
    """As checkpoints write a device's model (agents/devices.py, schemas/state.py): it scores and learns on identically."""
    m = DeviceAnomalyModel()  # full ensemble, HST included
    ts, x = _series(900, seed=4)
    m.score_learn_many(ts[:600], {"temperature": x[:600]})
    codec = StateCodec(STATE_TYPES)
    blob = codec.dumps(m, compress=True)
    assert len(blob) < 64_000
    clone = codec.loads(blob)
    assert clone.hst._tree_nodes[0][0] is clone.hst.trees[0]  # one set of nodes, as River keeps them
    a = m.score_learn_many(ts[600:], {"temperature": x[600:]}).scores
    b = clone.score_learn_many(ts[600:], {"temperature": x[600:]}).scores
    np.testing.assert_array_equal(a, b)
    assert m.score_learn_one(float(ts[-1] + 300), {"temperature": 5.0}).score == clone.score_learn_one(
        float(ts[-1] + 300), {"temperature": 5.0}).score
    assert codec.dumps(clone) == codec.dumps(m)  # the same state, bit for bit


def test_batch_with_one_row_blocks_equals_one_by_one(fast_kwargs):
    ts, x = _series(700, seed=5)
    one = [r.score for r in _run(DeviceAnomalyModel(**fast_kwargs), ts, x, "v")]
    batch = DeviceAnomalyModel(batch_max=1, **fast_kwargs).score_learn_many(ts, {"v": x})
    np.testing.assert_allclose(batch.scores, one, rtol=0, atol=1e-9)
    assert batch.is_anomaly.dtype == bool and len(batch.thresholds) == len(ts)


def test_block_path_is_prequential_and_agrees_with_one_by_one(fast_kwargs):
    """Blocks are scored against the state before the block: same alarms as one-by-one on clear events,
    and a row's score never depends on later rows of its block."""
    ts, x = _series(1300, seed=7)
    x = x.copy()
    x[1003] += 6.0  # spike
    x[1200:] += 3.0  # level shift (after the spike's 150-row suppression)
    one = np.array([r.score for r in _run(DeviceAnomalyModel(**fast_kwargs), ts, x, "v")])
    blk = DeviceAnomalyModel(**fast_kwargs).score_learn_many(ts, {"v": x})
    for s in (one, blk.scores):
        assert s[1003] >= 0.4 and s[1200:1208].max() >= 0.4
        assert (s[600:1000] >= 0.4).sum() <= 2
    # changing a later row of a block must not change earlier rows' scores
    y = x.copy()
    y[1190] += 50.0  # mid-block: the block is rows 1184..1215 (batch_max 32)
    blk2 = DeviceAnomalyModel(**fast_kwargs).score_learn_many(ts, {"v": y})
    np.testing.assert_array_equal(blk2.scores[:1190], blk.scores[:1190])
    assert blk2.scores[1190] >= 0.4


def test_batch_missing_values_and_new_metrics():
    m = DeviceAnomalyModel(use_forecaster=False)
    ts, x = _series(200, seed=8)
    h = np.full(200, 60.0) + 0.01 * (np.arange(200) % 7)
    h[::17] = np.nan
    r = m.score_learn_many(ts, {"t": x, "h": h})
    assert np.isfinite(r.scores).all() and set(r.metrics) <= {"t", "h", None}
    r2 = m.score_learn_many(ts + 200 * 300, {"t": x, "p": x * 2})  # "h" absent, "p" new
    assert np.isfinite(r2.scores).all() and m.names == ["t", "h", "p"]


def test_measure_throughput_smoke():
    from wharf.bench.anomaly import measure_throughput

    r = measure_throughput(n_devices=4, rounds=2, warmup_rounds=1, one_by_one_events=40, batch_min=5, batch_max=20)
    assert r["batch_events_per_s"] > 0 and r["one_by_one_events_per_s"] > 0
    assert r["batch_readings_per_s"] == pytest.approx(3 * r["batch_events_per_s"])
    assert 0 < r["pickled_bytes_per_device"] < 64_000


def test_multivariate_device_and_missing_values():
    m = DeviceAnomalyModel(use_forecaster=False)
    ts, x = _series(600, seed=6)
    for i, (t, v) in enumerate(zip(ts, x)):
        metrics = {"temperature": float(v), "humidity": 60.0 + 0.01 * (i % 7)}
        if i % 50 == 0:
            metrics["humidity"] = float("nan")  # a dropped field must not break scoring
        r = m.score_learn_one(float(t), metrics)
    r = m.score_one(float(ts[-1] + 300), {"temperature": float(x[-1]), "humidity": 95.0})
    assert r.metric == "humidity" and r.is_anomaly


def test_unknown_option_rejected():
    with pytest.raises(TypeError):
        DeviceAnomalyModel(not_an_option=1)


def test_silence_detector():
    s = SilenceDetector(factor=5.0)
    assert not s.check(T0)  # never seen: nothing to say
    for i in range(20):
        s.observe(T0 + 10.0 * i)
    last = T0 + 190.0
    assert s.expected_interval() == pytest.approx(10.0)
    assert not s.check(last + 45.0)
    assert s.check(last + 51.0)
    s.observe(last + 60.0)
    assert not s.check(last + 61.0)


def test_rules_defaults_and_config():
    rules = RuleSet({"cold_room": {"temperature": {"min": 2, "max": 8}}})
    assert rules.check("cold_room", {"temperature": 5.0}) == []
    (v,) = rules.check("cold_room", {"temperature": 9.5})
    assert (v.metric, v.kind, v.limit) == ("temperature", "max", 8.0)
    assert rules.check("cold_room", {"temperature": 1.0})[0].kind == "min"
    assert rules.check("unknown_type", {"temperature": 100.0}) == []
    assert rules.check("forklift", {"battery": 5.0})[0].metric == "battery"
    for dtype in ("cold_room", "conveyor", "forklift", "dock_door"):
        assert dtype in rules.rules
    custom = RuleSet({"cold_room": {"temperature": {"max": 4}}}, defaults=False)
    assert custom.check("cold_room", {"temperature": 5.0})[0].limit == 4.0
    with pytest.raises(ValueError):
        RuleSet({"x": {"t": {"min": 5, "max": 1}}})


def test_tail_calibrator_ranks_by_own_history():
    c = TailCalibrator(half_life=1000, warmup=10)
    rng = np.random.default_rng(0)
    for v in np.abs(rng.normal(0, 1, 2000)):
        c.update(float(v))
    assert c.evidence(0.1) < 0.1
    assert 1.0 < c.evidence(2.6) < 3.0  # ~1 % tail of |N(0,1)|
    assert c.evidence(20.0) > c.evidence(5.0) > c.evidence(2.6)


def test_neg_log10_tail_matches_erfc():
    for z in (0.5, 2.0, 4.9, 5.1, 8.0):
        exact = -math.log10(0.5 * math.erfc(z / math.sqrt(2)))
        assert neg_log10_tail(z) == pytest.approx(exact, rel=1e-3)


def test_one_device_cannot_grow_its_model_without_bound():
    """Each metric name costs a forecaster and calibrators: names past `max_metrics` are not modelled."""
    m = DeviceAnomalyModel(max_metrics=3, use_forecaster=False)
    for i in range(10):
        m.learn_one(1_700_000_000.0 + i, {f"m{j}": float(i + j) for j in range(i, i + 4)})
    assert len(m.names) == 3 and m.ignored_metrics > 0
    res = m.score_one(1_700_000_100.0, {"other": 1.0})  # only unknown names: scored as nothing, no error
    assert 0.0 <= res.score <= 1.0 and len(m.names) == 3


def test_forecaster_gradients_match_autograd():
    """The forecaster's hand-written backward pass against PyTorch's autograd on the same Huber loss, with
    residuals on both sides of the Huber knee; then training steps follow the autograd path step for step."""
    import torch

    from online_models.anomaly.forecaster import OnlineMLPForecaster

    rng = np.random.default_rng(7)
    fc = OnlineMLPForecaster(seed=3)
    fc.params = [(p + rng.normal(0, 0.3, p.shape)).astype(np.float32) for p in fc.params]  # not the zero biases
    xs = rng.normal(0, 1.5, (256, fc.lags + 2)).astype(np.float32)
    ys = (xs[:, fc.lags - 1] + rng.normal(0, 1.5, 256)).astype(np.float32)

    def autograd(params: list[np.ndarray]) -> list[np.ndarray]:
        ps = [torch.from_numpy(p.copy()).requires_grad_(True) for p in params]
        xt = torch.from_numpy(xs)
        pred = (torch.tanh(xt @ ps[0] + ps[1]) @ ps[2] + ps[3])[:, 0] + xt[:, fc.lags - 1]
        return [g.numpy() for g in torch.autograd.grad(torch.nn.functional.smooth_l1_loss(pred, torch.from_numpy(ys)), ps)]

    residual = fc.predict_many(xs) - ys
    assert (np.abs(residual) < 1).sum() > 20 and (np.abs(residual) > 1).sum() > 20  # both branches of the loss
    for ours, ref in zip(fc.gradients(xs, ys), autograd(fc.params)):
        assert ours.dtype == np.float32 and ours.shape == ref.shape
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-7)
    before = [p.copy() for p in fc.params]
    fc.learn_many(xs[:fc.train_every], ys[:fc.train_every])  # one training round: `epochs` Adam steps
    assert fc.steps == fc.epochs and all(not np.array_equal(a, b) for a, b in zip(before, fc.params))


def test_a_lone_reading_at_the_level_needs_its_neighbour_unless_extreme():
    """At a 5-minute cadence a reading that reaches the alert level by less than `confirm_extreme` decades is held
    (what a series does routinely: one lone excursion); it alerts when its neighbour confirms it (at >= `confirm_frac`
    of the level), or when it is extreme. With `confirm_extreme` 0 the same lone reading alerts (the rule is off).
    Statistics only (no forecaster, no trees), so the reading after the bump is ordinary."""
    kw = {"use_hst": False, "use_forecaster": False}
    ts, x = _series(3000, seed=4)

    def run(bumps: dict[int, float], **over: float):
        y = x.copy()
        for i, b in bumps.items():
            y[i] += b
        return DeviceAnomalyModel(**kw, **over).score_learn_many(ts, {"v": y})

    bump = next(b for b in np.arange(0.5, 6.0, 0.125) if run({2500: b}, confirm_extreme=0.0).is_anomaly[2500])
    lone = run({2500: bump})
    assert not lone.is_anomaly[2490:2700].any()  # held, and nothing confirmed it
    assert 0.39 < lone.scores[2500] < 0.4  # just below the level
    pair = run({2500: bump, 2501: bump})
    assert pair.is_anomaly[2500:2502].any()
    assert run({2500: 10 * bump}).is_anomaly[2500]  # extreme: alone


def test_an_incident_going_on_weaker_than_its_alert_does_not_alert_again():
    """`rearm_frac`: when the suppression after an alert ends while the device is still crossing the level, a
    crossing alerts again only at >= 0.9 of the alert's evidence. On NAB's rds_cpu_utilization_cc0c53 (two level
    shifts whose excursions last hundreds of readings; ../shared) the alerts with the rule are those without it
    less some re-alerts that came after a suppression ended; with `rearm_frac` 0 it is the previous behaviour."""
    from pathlib import Path

    from online_models.evaluation.nab import read_series

    path = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "nab" / "data" / \
        "realAWSCloudwatch" / "rds_cpu_utilization_cc0c53.csv"
    stamps, values = read_series(path)
    ts = np.asarray(stamps).astype("datetime64[ns]").astype(np.int64) / 1e9

    def alerts(**over: float) -> np.ndarray:
        return np.flatnonzero(DeviceAnomalyModel(**over).score_learn_many(ts, {"value": values}).is_anomaly)

    on, off = alerts(), alerts(rearm_frac=0.0)
    assert set(on) < set(off) and on[0] == off[0]
    suppress = DeviceAnomalyModel().cfg.suppress_events
    for i in sorted(set(off) - set(on)):
        assert i - on[on < i].max() > suppress  # a re-alert after the suppression ended, not a first alert


def _weak_alert_then_spike(step: float, spike: float, first: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Noise; a 4-reading step of `first` / 0.1 sigma at row 2000 (a weak alert), a one-reading spike at row 2060,
    inside the alert's 150-row suppression."""
    rng = np.random.default_rng(3)
    ts = T0 + np.arange(3000) * step
    x = 20.0 + rng.normal(0, 0.1, 3000)
    x[2000:2004] += first
    x[2060] += spike
    return ts, x


def test_a_much_stronger_spike_inside_a_fast_devices_suppression_alerts(fast_kwargs):
    """`suppress_pass` (on by default): on a device reading faster than `level_interval_s`, a crossing that starts inside
    the suppression at >= 1/0.9 of the evidence of the alert that opened it is let through (the simulator's missed
    spike faults came inside a false or a stuck alarm's suppression); a weaker one, an incident still crossing (the
    step's later rows, growing), and any crossing on a device reading every 5 minutes (NAB's) stay suppressed."""
    def alerts(step: float, spike: float, first: float = 3.0, **over: float) -> list[int]:
        ts, x = _weak_alert_then_spike(step, spike, first)
        r = DeviceAnomalyModel(**fast_kwargs, **over).score_learn_many(ts, {"t": x})
        return list(np.flatnonzero(r.is_anomaly[1000:]) + 1000)

    assert alerts(1.0, 300.0) == [2003, 2060]
    assert DeviceAnomalyModel().cfg.suppress_pass == 1 / 0.9
    assert alerts(1.0, 300.0, suppress_pass=0.0) == [2003]  # off: every crossing suppressed
    assert alerts(1.0, 30.0) == [2003]  # a spike, but not stronger than the alert: the same incident for all we know
    assert alerts(1.0, 30.0, first=5.0) == [2000]  # the step alerts on its first row; its growing later rows do not
    slow = alerts(300.0, 300.0)
    assert 2060 not in slow and slow == alerts(300.0, 300.0, suppress_pass=0.0)


def test_forecasters_trained_together_are_each_as_if_trained_alone():
    """`train_many` stacks the forecasters due at once (the device bank trains a round's together): every weight, Adam
    moment and step count is the bit pattern training each alone gives, across several stacks (more than
    `TRAIN_CHUNK`), different sample counts and step counts, and blocks queued in pieces."""
    import copy

    from online_models.anomaly.forecaster import TRAIN_CHUNK, OnlineMLPForecaster, train_many

    rng = np.random.default_rng(11)
    together = []
    for i in range(TRAIN_CHUNK + 9):
        fc = OnlineMLPForecaster(seed=i % 4, train_every=256)
        for _ in range(i % 3):  # some have trained before: their own step counts and moments
            fc.learn_many(rng.normal(0, 1, (256, fc.lags + 2)).astype(np.float32), rng.normal(0, 1, 256).astype(np.float32))
        n = 256 + i % 5  # four stacks of one sample count each, two of them past `TRAIN_CHUNK`
        xs = (rng.normal(0, 1, (n, fc.lags + 2)) * rng.uniform(0.1, 4)).astype(np.float32)
        ys = rng.normal(0, 2, n).astype(np.float32)
        assert not fc.queue_many(xs[:100], ys[:100]) and fc.queue_many(xs[100:], ys[100:])
        together.append(fc)
    alone = copy.deepcopy(together)
    train_many(together)
    for fc in alone:
        train_many([fc])
    for a, b in zip(together, alone, strict=True):
        assert a.steps == b.steps > 0 and a.buf_x == b.buf_x == [] and a._queued == b._queued == 0  # noqa: SLF001
        for x, y in zip(a.params + a.m + a.v, b.params + b.m + b.v, strict=True):
            assert x.dtype == y.dtype == np.float32 and x.shape == y.shape and x.flags.c_contiguous
            assert np.array_equal(x.view(np.uint32), y.view(np.uint32))


def test_forecasters_predicting_as_a_stack_give_each_one_s_own_predictions():
    """`predict_stacked` (the device bank's forecasts, one stack per block length) against each forecaster's own
    `predict_many`, to the bit, for blocks of one and of several readings, across stacks (more than `PREDICT_CHUNK`)."""
    from online_models.anomaly.forecaster import PREDICT_CHUNK, OnlineMLPForecaster, predict_stacked

    rng = np.random.default_rng(5)
    fcs = [OnlineMLPForecaster(seed=i % 40) for i in range(PREDICT_CHUNK + 9)]
    for fc in fcs:
        fc.params = [(p + rng.normal(0, 0.3, p.shape)).astype(np.float32) for p in fc.params]
    for rows in (1, 3, 17):
        xs = rng.normal(0, 2, (len(fcs), rows, fcs[0].lags + 2)).astype(np.float32)
        got = predict_stacked(fcs, xs)
        assert got.shape == (len(fcs), rows) and got.dtype == np.float32
        for fc, x, g in zip(fcs, xs, got, strict=True):
            assert np.array_equal(fc.predict_many(x).view(np.uint32), g.view(np.uint32))


def test_forecaster_trains_at_the_same_sample_after_a_checkpoint():
    """The count of queued samples is not in the checkpoint (it is derived from the queued targets): a forecaster
    restored mid-queue trains on the same sample, with the same weights, as one that never stopped."""
    from online_models.anomaly.forecaster import OnlineMLPForecaster

    rng = np.random.default_rng(5)
    xs = rng.normal(0, 1, (300, 10)).astype(np.float32)
    ys = rng.normal(0, 1, 300).astype(np.float32)
    kept, codec = OnlineMLPForecaster(train_every=256, seed=1), StateCodec(STATE_TYPES)  # as the bank builds them
    for i in range(200):  # one-sample blocks, as the bank queues them
        kept.learn_many(xs[i:i + 1], ys[i:i + 1])
    state = codec.dumps(kept)
    assert b"_queued" not in state  # the checkpoint format is as before the count existed
    restored = codec.loads(state)
    for fc in (kept, restored):
        for i in range(200, 300):
            fc.learn_many(xs[i:i + 1], ys[i:i + 1])
            assert fc.steps == (fc.epochs if i >= kept.train_every - 1 else 0)
    assert all(np.array_equal(a, b) for a, b in zip(kept.params, restored.params))
    assert restored._queued == kept._queued == 300 - kept.train_every  # noqa: SLF001


def test_the_model_kernels_cache_is_emptied_when_older_than_kernels_py(fast_kwargs) -> None:
    """numba checks a cache against its function's own file only: `model_kernels` compiles `kernels.py` functions
    into its own, so a cache of it older than `kernels.py` must not be loaded (it would run the old kernels)."""
    import os

    from online_models.anomaly import model_kernels

    ts = np.arange(64, dtype=float) * 60.0
    DeviceAnomalyModel(seed=0, **fast_kwargs).score_learn_many(ts, {"t": np.sin(ts / 600.0)})  # compiled, cached
    f = model_kernels.forecast_scores
    index = f._cache._cache_file  # noqa: SLF001
    assert index._index_path in model_kernels._tie_cache_to_kernels()  # noqa: SLF001
    assert index._load_index()  # noqa: SLF001 - this process compiled and saved it, newer than kernels.py
    model_kernels._tie_cache_to_kernels()  # noqa: SLF001
    assert index._load_index()  # noqa: SLF001 - a fresh cache is left alone
    os.utime(index._index_path, (0, 0))  # noqa: SLF001 - as if kernels.py had changed after it was written
    model_kernels._tie_cache_to_kernels()  # noqa: SLF001
    assert index._load_index() == {}  # noqa: SLF001
