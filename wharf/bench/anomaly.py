"""Detector-only throughput: score+learn in a tight loop (no Kafka/Faust), for ``wharf bench sensors``.

>>> r = measure_throughput(n_devices=5, rounds=2, one_by_one_events=50, warmup_rounds=1)
>>> r["batch_events_per_s"] > 0 and r["one_by_one_events_per_s"] > 0
True
"""

from __future__ import annotations

import math
import pickle
import time

import numpy as np

from online_models.anomaly.model import DeviceAnomalyModel


def _device_batch(rng: np.random.Generator, t0: float, n: int, n_metrics: int, step: float, dev: int):
    ts = t0 + np.arange(n) * step
    day = 2.0 * math.pi * ts / 86400.0
    metrics = {
        f"m{k}": 10.0 * (k + 1) + (k + 1) * np.sin(day + dev) + rng.normal(0.0, 0.3, n)
        for k in range(n_metrics)
    }
    return ts, metrics


def measure_throughput(
    n_devices: int = 1000,
    n_metrics: int = 3,
    batch_min: int = 10,
    batch_max: int = 50,
    rounds: int = 6,
    warmup_rounds: int = 2,
    one_by_one_events: int = 3000,
    step_s: float = 60.0,
    seed: int = 0,
    threads: int | None = 1,
    **model_kwargs: object,
) -> dict[str, float]:
    """Score+learn rate of the full ensemble through one process.

    Batch path: ``n_devices`` models, each round every device gets one batch of
    ``batch_min..batch_max`` readings (uniform) of ``n_metrics`` metrics via
    ``score_learn_many`` (like Faust ``stream.take`` batches grouped per device).
    ``warmup_rounds`` are not timed (they include the calibrators' warm-up and the
    first forecaster training). One-by-one path: ``score_learn_one`` on warmed
    devices, ``one_by_one_events`` events in total. An *event* is one timestamp
    with ``n_metrics`` values; *readings* = events x metrics.
    """
    if threads is not None:
        try:
            import torch

            torch.set_num_threads(threads)
        except ImportError:  # pragma: no cover - torch is a dependency of the forecaster
            pass
    rng = np.random.default_rng(seed)
    models = [DeviceAnomalyModel(seed=seed, **model_kwargs) for _ in range(n_devices)]
    clock = [1_700_000_000.0] * n_devices
    events = 0
    elapsed = 0.0
    for r in range(warmup_rounds + rounds):
        for d, m in enumerate(models):
            n = int(rng.integers(batch_min, batch_max + 1))
            ts, metrics = _device_batch(rng, clock[d], n, n_metrics, step_s, d)
            clock[d] = float(ts[-1]) + step_s
            t = time.perf_counter()
            m.score_learn_many(ts, metrics)
            dt = time.perf_counter() - t
            if r >= warmup_rounds:
                elapsed += dt
                events += n
    batch_eps = events / elapsed if elapsed > 0 else 0.0

    # one-by-one on warmed models
    per = max(1, one_by_one_events // max(1, min(n_devices, 100)))
    ob_models = models[: min(n_devices, 100)]
    rows = []
    for d, m in enumerate(ob_models):
        ts, metrics = _device_batch(rng, clock[d], per, n_metrics, step_s, d)
        rows.append((m, ts.tolist(), [{k: float(v[i]) for k, v in metrics.items()} for i in range(per)]))
    ob_events = 0
    t = time.perf_counter()
    for m, tss, dicts in rows:
        for tsv, md in zip(tss, dicts):
            m.score_learn_one(tsv, md)
        ob_events += len(tss)
    ob_elapsed = time.perf_counter() - t
    ob_eps = ob_events / ob_elapsed if ob_elapsed > 0 else 0.0
    sizes = [len(pickle.dumps(m)) for m in models[: min(n_devices, 20)]]
    return {
        "devices": float(n_devices),
        "metrics_per_event": float(n_metrics),
        "batch_events": float(events),
        "batch_seconds": elapsed,
        "batch_events_per_s": batch_eps,
        "batch_readings_per_s": batch_eps * n_metrics,
        "one_by_one_events": float(ob_events),
        "one_by_one_events_per_s": ob_eps,
        "one_by_one_readings_per_s": ob_eps * n_metrics,
        "pickled_bytes_per_device": float(np.mean(sizes)),
    }


if __name__ == "__main__":  # pragma: no cover - manual runs
    import json

    print(json.dumps(measure_throughput(), indent=2))
