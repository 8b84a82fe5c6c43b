"""Digest of what `DeviceAnomalyModel` computes, to check a change keeps it bit for bit (docs/performance.md, issue 19).

`PYTHONPATH=. python scripts/anomaly_model_digest.py` in the two trees being compared (e.g. `git archive main` unpacked
elsewhere), then `diff` the outputs: per configuration, the sha256 of every `score_learn_many` result (scores, alerts,
thresholds, best metric) and of `score_learn_one` / `score_one` results, then of the pickled models after the run.
The workloads cover missing values, stuck metrics, spikes, drifts, metrics appearing and disappearing, 60 s and 300 s
devices, alerts and suppression, the weekly profile, small blocks, and the forecaster / HST / ramp turned off.
"""

from __future__ import annotations

import hashlib
import pickle

import numpy as np

from online_models.anomaly.model import DeviceAnomalyModel
from wharf.bench.anomaly import _workload


def run(cfg: dict, n_dev: int, rounds: int, seed: int, nan_frac: float, stuck: bool, spikes: bool) -> tuple[str, str]:
    out_h = hashlib.sha256()
    rng = np.random.default_rng(seed)
    models = [DeviceAnomalyModel(seed=seed, **cfg) for _ in range(n_dev)]
    work, clock = _workload(rng, n_dev, 3, 1, 50, rounds, 60.0 if seed % 2 else 300.0)
    for r, batches in enumerate(work):
        for d, (m, (ts, metrics)) in enumerate(zip(models, batches)):
            metrics = {k: v.copy() for k, v in metrics.items()}
            if d % 3 == 0 and r > 3:  # a drift
                metrics["m0"] += 0.05 * r * np.arange(len(ts)) / len(ts) + 0.3 * r
            for v in metrics.values():
                v[rng.random(len(v)) < nan_frac] = np.nan
                if spikes:
                    v[rng.random(len(v)) < 0.01] += rng.normal(0, 30)
            if stuck and d % 4 == 1:
                metrics["m1"][:] = 5.0
            if d % 5 == 2 and r % 3 == 1:  # a new metric appears
                metrics[f"x{r}"] = rng.normal(0, 1, len(ts))
            if d % 7 == 3 and r % 2:  # one metric missing
                metrics.pop("m2")
            res = m.score_learn_many(ts, metrics)
            for a in (res.scores, res.is_anomaly, res.thresholds):
                out_h.update(a.tobytes())
            out_h.update(repr(res.metrics).encode())
    for d, m in enumerate(models[:5]):  # one by one, a missing value every 7th reading
        for i in range(30):
            t = clock[d] + 60.0 * i
            md = {"m0": float(rng.normal(10, 1)), "m1": None if i % 7 == 0 else float(rng.normal(20, 1))}
            for one in (m.score_learn_one(t, md), m.score_one(t + 1, md)):
                out_h.update(repr((one.score, one.is_anomaly, one.metric, one.value, sorted(one.components.items()))).encode())
    state_h = hashlib.sha256()
    for m in models:
        state_h.update(pickle.dumps(m))
    return out_h.hexdigest()[:16], state_h.hexdigest()[:16]


CASES = [
    ("default", {}, 30, 14, 0, 0.0, False, False),
    ("nan+stuck+spike", {}, 30, 14, 1, 0.1, True, True),
    ("weekly", {"use_weekly": True, "weekly_min_age": 3600.0}, 20, 12, 2, 0.05, True, True),
    ("small-batch", {"batch_max": 7, "train_every": 16, "hst_every": 1}, 20, 10, 3, 0.2, True, True),
    ("no-fc-no-hst", {"use_forecaster": False, "use_hst": False, "ramp_trend_alpha": 0.0, "shift_window": 1}, 15, 10, 4,
     0.1, True, True),
]

if __name__ == "__main__":
    for name, cfg, *args in CASES:
        print(name, *run(cfg, *args), flush=True)
