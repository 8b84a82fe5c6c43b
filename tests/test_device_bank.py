"""The device bank (`online_models.anomaly.bank`) against per-device `DeviceAnomalyModel.score_learn_many`.

Real NAB files as devices, their rows interleaved in batches of random sizes: every device's scores, alerts,
thresholds and top metrics must be those of its own model fed the same rows, to float rounding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from online_models.anomaly import DeviceAnomalyModel
from online_models.anomaly.bank import DeviceBank
from online_models.anomaly.state_types import STATE_TYPES
from schemas.state import StateCodec

NAB = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "nab" / "data"
FILES = ["realKnownCause/machine_temperature_system_failure.csv", "realKnownCause/nyc_taxi.csv",
         "artificialWithAnomaly/art_daily_jumpsup.csv", "realAWSCloudwatch/ec2_cpu_utilization_5f5533.csv",
         "realAdExchange/exchange-2_cpc_results.csv", "artificialNoAnomaly/art_daily_perfect_square_wave.csv"]


def _nab(rel: str, rows: int) -> tuple[np.ndarray, np.ndarray]:
    df = pd.read_csv(NAB / rel).head(rows)
    ts = pd.to_datetime(df["timestamp"]).astype("datetime64[ns]").astype(np.int64).to_numpy() / 1e9
    return ts, df["value"].to_numpy(float)


def _devices_multi(rows: int, rng: np.random.Generator) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Devices of several metrics from NAB files: metrics missing from some readings, one appearing late."""
    out = []
    for a, b in ((0, 1), (2, 3), (4, 5)):
        ta, va = _nab(FILES[a], rows)
        _, vb = _nab(FILES[b], rows)
        n = min(len(ta), len(vb))
        va, vb = va[:n].copy(), vb[:n].copy()
        va[rng.random(n) < 0.1] = np.nan
        vb[rng.random(n) < 0.2] = np.nan
        late = np.full(n, np.nan)
        late[n // 2:] = va[n // 2:] * 0.5 + 1.0
        out.append((ta[:n], {"b": vb, "a": va, "late": late}))
    return out


def _run_both(devices, kw: dict, rng: np.random.Generator, max_take: int = 80):
    """Feed every device through its own model and, interleaved, through one bank; returns both results."""
    bank = DeviceBank(**kw)
    models = [DeviceAnomalyModel(**kw) for _ in devices]
    slots = [bank.slot(f"dev-{i}") for i in range(len(devices))]
    pos = [0] * len(devices)
    ref: list[list] = [[] for _ in devices]
    got: list[list] = [[] for _ in devices]
    while any(p < len(ts) for p, (ts, _) in zip(pos, devices)):
        dev, tss, cols = [], [], {}
        for i, (ts, metrics) in enumerate(devices):
            a = pos[i]
            b = pos[i] = min(len(ts), a + int(rng.integers(0, max_take)))
            if a == b:
                continue
            part = {k: v[a:b] for k, v in metrics.items() if not np.isnan(v[a:b]).all()}  # as `score_readings`
            r = models[i].score_learn_many(ts[a:b], part)
            ref[i].append((r.scores, r.is_anomaly, r.thresholds, r.metrics))
            dev += [slots[i]] * (b - a)
            tss.append(ts[a:b])
            for k in dict.fromkeys(k for _, m in devices for k in m):  # the models' order of names
                cols.setdefault(k, []).append(metrics[k][a:b] if k in metrics else np.full(b - a, np.nan))
        if not dev:
            continue
        dev_a = np.array(dev)
        # interleave: a random sequence of devices, each device's rows kept in their order
        queues = {s: list(np.flatnonzero(dev_a == s)) for s in set(dev)}
        idx = np.array([queues[s].pop(0) for s in rng.permutation(dev_a)])
        res = bank.score_learn_batch(dev_a[idx], np.concatenate(tss)[idx], {k: np.concatenate(v)[idx] for k, v in cols.items()})
        for i, s in enumerate(slots):
            sel = dev_a[idx] == s
            if sel.any():
                got[i].append((res.scores[sel], res.is_anomaly[sel], res.thresholds[sel],
                               [m for m, q in zip(res.metrics, sel) if q]))
    return bank, models, slots, ref, got


def _assert_models_equal(a: DeviceAnomalyModel, b: DeviceAnomalyModel) -> None:
    """`b` (extracted from a bank) holds the state of `a` (a per-device model fed the same rows)."""
    assert a.names == b.names and a.n == b.n and a.ignored_metrics == b.ignored_metrics
    for attr in ("lv_mean", "lv_mad", "lg_mean", "lg_mad", "cu_pos", "cu_scale", "s_means", "s_counts", "recent",
                 "lagbuf", "c_counts", "c_total", "c_n", "fc_err", "last", "run", "repeat_rate"):
        np.testing.assert_allclose(getattr(b, attr), getattr(a, attr), rtol=1e-9, atol=1e-12, err_msg=attr)
    assert (a.suppress_left, a.since_cross, a.silence.n, a.silence.last_ts) == (b.suppress_left, b.since_cross, b.silence.n, b.silence.last_ts)
    np.testing.assert_allclose(b.e_alert, a.e_alert, rtol=1e-9, atol=1e-12)
    for fa, fb in zip(a.fc, b.fc, strict=True):
        assert fa.steps == fb.steps and all(np.array_equal(p, q) for p, q in zip(fa.params, fb.params))
    ha, hb = a.hst, b.hst
    assert (ha.counter, ha._first_window, dict(ha.limits), ha.rng.getstate()) == (hb.counter, hb._first_window, dict(hb.limits), hb.rng.getstate())
    for ta, tb in zip(ha.trees, hb.trees, strict=True):
        na, nb = list(ta.iter_dfs()), list(tb.iter_dfs())
        assert [(type(x), getattr(x, "feature", None), getattr(x, "threshold", None), x.l_mass, x.r_mass) for x in na] == \
            [(type(x), getattr(x, "feature", None), getattr(x, "threshold", None), x.l_mass, x.r_mass) for x in nb]
    assert ha.score_one({"value:l": 0.3, "value:s": 0.5}) == hb.score_one({"value:l": 0.3, "value:s": 0.5})


def _assert_same(ref, got) -> int:
    alerts = 0
    for r_parts, g_parts in zip(ref, got):
        rs, gs = (np.concatenate([p[0] for p in parts]) for parts in (r_parts, g_parts))
        np.testing.assert_allclose(gs, rs, rtol=1e-9, atol=1e-12)
        ra, ga = (np.concatenate([p[1] for p in parts]) for parts in (r_parts, g_parts))
        assert (ra == ga).all()
        np.testing.assert_array_equal(np.concatenate([p[2] for p in g_parts]), np.concatenate([p[2] for p in r_parts]))
        assert sum((p[3] for p in g_parts), []) == sum((p[3] for p in r_parts), [])
        alerts += int(ra.sum())
    return alerts


@pytest.mark.skipif(not NAB.is_dir(), reason="needs ../shared/datasets/nab")
def test_bank_equals_per_device_models_on_nab():
    """The full ensemble (forecaster and HST included), six NAB files as six interleaved devices."""
    rng = np.random.default_rng(3)
    devices = [(ts, {"value": v}) for ts, v in (_nab(f, 4000) for f in FILES)]
    bank, models, slots, ref, got = _run_both(devices, {}, rng)
    assert _assert_same(ref, got) > 5  # alerts happened, and on the same rows
    for i, (m, s) in enumerate(zip(models, slots)):  # the forecasters trained (4000 rows: ~15 training steps each)
        assert bank.fc[int(bank.dm[s, 0])].steps == m.fc[0].steps > 0
        _assert_models_equal(m, bank.extract(f"dev-{i}"))


@pytest.mark.skipif(not NAB.is_dir(), reason="needs ../shared/datasets/nab")
def test_bank_equals_models_with_missing_new_and_ignored_metrics():
    """Several metrics per device, some missing per reading, one new half-way; weekly profile on; a metric cap."""
    rng = np.random.default_rng(5)
    for kw in ({"use_weekly": True, "batch_max": 16}, {"max_metrics": 2, "hst_every": 3}):
        devices = _devices_multi(3000, rng)
        bank, models, slots, ref, got = _run_both(devices, kw, rng, max_take=50)
        _assert_same(ref, got)
        for m, s in zip(models, slots):
            assert bank.names[s] == m.names and bank.ignored[s] == m.ignored_metrics


def test_bank_equals_the_model_when_a_stronger_spike_passes_a_fast_devices_suppression():
    """`suppress_pass` (1 Hz: the interval correction is paid) in the kernel as in the model."""
    from tests.test_anomaly_models import _weak_alert_then_spike

    ts, x = _weak_alert_then_spike(1.0, 300.0)
    bank, models, slots, ref, got = _run_both([(ts, {"t": x})], {"use_hst": False, "suppress_pass": 1 / 0.9},
                                             np.random.default_rng(7))
    assert _assert_same(ref, got) >= 2
    alerts = np.flatnonzero(np.concatenate([p[1] for p in got[0]]))
    assert 2060 in alerts and 2003 in alerts


@pytest.mark.skipif(not NAB.is_dir(), reason="needs ../shared/datasets/nab")
def test_extract_insert_round_trip_through_the_state_format():
    """A device's row out as a `DeviceAnomalyModel` (checkpointed with `schemas.state`) and into another bank:
    the model and both banks then score the rest of the series alike."""
    ts, v = _nab(FILES[0], 3000)
    bank = DeviceBank()
    s = bank.slot("d")
    bank.score_learn_batch(np.full(2000, s), ts[:2000], {"value": v[:2000]})
    codec = StateCodec(STATE_TYPES)
    model = codec.loads(codec.dumps(bank.extract("d"), compress=True))
    other = DeviceBank(capacity=1)
    other.slot("someone else")
    s2 = other.insert("d", model)
    tail = {"value": v[2000:]}
    a = bank.score_learn_batch(np.full(1000, s), ts[2000:], tail)
    b = other.score_learn_batch(np.full(1000, s2), ts[2000:], tail)
    c = model.score_learn_many(ts[2000:], tail)
    np.testing.assert_allclose(b.scores, a.scores, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(c.scores, a.scores, rtol=1e-9, atol=1e-12)
    assert a.is_anomaly.sum() == c.is_anomaly.sum()
    again = bank.extract("d")
    assert again.n == model.n == 3000 and again.hst.counter == model.hst.counter


def test_a_snapshot_keeps_the_state_it_was_taken_with():
    """`DeviceBank.snapshot` (a checkpoint's copy, encoded off the scoring loop) is the devices' state when it was
    taken, byte for byte in the state format, however much the bank learns after it (forecaster training included)."""
    ts, v = _nab(FILES[0], 1600)
    bank = DeviceBank(train_every=16)
    slots = [bank.slot(k) for k in ("a", "b", "c")]
    codec = StateCodec(STATE_TYPES)
    for i in range(0, 1000, 25):  # small blocks: many queued forecaster samples, several trainings
        for j, s in enumerate(slots):
            bank.score_learn_batch(np.full(25, s), ts[i:i + 25], {"value": v[i:i + 25] + j})
    snap = bank.snapshot(["c", "a"])
    taken = {k: codec.dumps(bank.extract(k)) for k in ("a", "c")}
    for i in range(1000, 1300, 25):
        for j, s in enumerate(slots):
            bank.score_learn_batch(np.full(25, s), ts[i:i + 25], {"value": v[i:i + 25] + j})
    assert {k: codec.dumps(snap.extract(k)) for k in ("a", "c")} == taken
    assert codec.dumps(bank.extract("a")) != taken["a"]


def test_bank_refuses_mismatched_rows_and_configs():
    bank = DeviceBank(use_forecaster=False)
    with pytest.raises(ValueError, match="one entry per row"):
        bank.score_learn_batch(np.zeros(2, int), np.zeros(3), {"t": np.zeros(3)})
    with pytest.raises(ValueError, match="configuration"):
        bank.insert("x", DeviceAnomalyModel())
    with pytest.raises(TypeError, match="unknown option"):
        DeviceBank(not_an_option=1)


def test_bench_figures_come_from_the_bank():
    """`wharf bench anomaly`'s parts on a small scale: the same readings through the bank, and a holding process."""
    from wharf.bench.anomaly import hold_devices, measure_bank_throughput

    r = measure_bank_throughput(n_devices=5, rounds=1, warmup_rounds=1, use_hst=False)
    assert r["batch_events"] >= 5 * 10 and r["batch_readings_per_s"] > 0 and r["bytes_per_device_arrays"] > 1000
    h = hold_devices(20, 60)
    assert h["devices"] == 20 and h["rss_after_mb"] >= h["rss_before_mb"] > 0 and h["bytes_per_device_total"] > 0


def _doors_then_climb(seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """A cold room at 1 Hz (4.2 °C, noise 0.1): five 60 s door openings (+6 °C) every 5 min, then, 10 min after the
    last, a compressor failure warming it 0.25 °C/min. The doors pull the slow baseline up, so the lower CUSUM is still
    draining their aftermath when the climb starts. Returns the rows, the readings and the climb's first row."""
    rng = np.random.default_rng(seed)
    n = 5400 + 1500
    ts = 1_700_000_000.0 + np.arange(n) * 1.0
    x = 4.2 + rng.normal(0, 0.1, n)
    for s in (3600, 3900, 4200, 4500, 4800):
        x[s:s + 60] += 6.0
    x[5400:] += 0.25 / 60 * np.arange(n - 5400)
    return ts, x, 5400


def test_a_climb_while_the_lower_cusum_drains_gets_its_own_anchor():
    """The drift's anchor belongs to the CUSUM side that leads: the doors' excursion spent it with an alert, but the
    climb (the upper side taking over from the draining lower one) crosses the tail point afresh and is scored against
    the scale it started under, so it alarms before the 8 °C rule. Model and bank agree row by row and in the anchor."""
    rng = np.random.default_rng(7)
    runs = [_doors_then_climb(s) for s in (1, 4, 7)]
    kw = {"use_hst": False, "train_every": 64}
    bank, models, _, ref, got = _run_both([(ts, {"temperature": x}) for ts, x, _ in runs], kw, rng)
    _assert_same(ref, got)
    for i, ((ts, x, climb), m) in enumerate(zip(runs, models)):
        b = bank.extract(f"dev-{i}")
        for attr in ("cu_pos", "cu_neg", "cu_scale", "cu_anc"):
            np.testing.assert_allclose(getattr(b, attr), getattr(m, attr), rtol=1e-9, atol=1e-12, err_msg=attr)
        rule = climb + int(np.argmax(x[climb:] >= 8.0))
        alarms = np.concatenate([p[1] for p in ref[i]])
        assert alarms[3600:climb].any()  # the doors were flagged (and spent the excursion's anchor)
        assert alarms[climb + 300:rule].any()  # the climb itself, not the doors' aftermath, alarms before the rule
