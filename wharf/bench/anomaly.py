"""Detector-only throughput and memory (no Kafka/Faust): per-device models (``wharf bench sensors``'s reference) and
the device bank that the sensor path runs (``wharf bench anomaly``).

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
from wharf.bench.memory import rss_mb


def _device_batch(rng: np.random.Generator, t0: float, n: int, n_metrics: int, step: float, dev: int):
    ts = t0 + np.arange(n) * step
    day = 2.0 * math.pi * ts / 86400.0
    metrics = {
        f"m{k}": 10.0 * (k + 1) + (k + 1) * np.sin(day + dev) + rng.normal(0.0, 0.3, n)
        for k in range(n_metrics)
    }
    return ts, metrics


def _workload(rng: np.random.Generator, n_devices: int, n_metrics: int, batch_min: int, batch_max: int, rounds: int,
              step_s: float) -> tuple[list[list[tuple[np.ndarray, dict[str, np.ndarray]]]], list[float]]:
    """Per round, per device: one batch of ``batch_min..batch_max`` readings; and each device's next timestamp."""
    clock = [1_700_000_000.0] * n_devices
    out = []
    for _ in range(rounds):
        batches = []
        for d in range(n_devices):
            n = int(rng.integers(batch_min, batch_max + 1))
            ts, metrics = _device_batch(rng, clock[d], n, n_metrics, step_s, d)
            clock[d] = float(ts[-1]) + step_s
            batches.append((ts, metrics))
        out.append(batches)
    return out, clock


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
    **model_kwargs: object,
) -> dict[str, float]:
    """Score+learn rate of the full ensemble through one process, one `DeviceAnomalyModel` per device.

    Batch path: ``n_devices`` models, each round every device gets one batch of
    ``batch_min..batch_max`` readings (uniform) of ``n_metrics`` metrics via
    ``score_learn_many`` (like Faust ``stream.take`` batches grouped per device).
    ``warmup_rounds`` are not timed (they include the calibrators' warm-up and the
    first forecaster training). One-by-one path: ``score_learn_one`` on warmed
    devices, ``one_by_one_events`` events in total. An *event* is one timestamp
    with ``n_metrics`` values; *readings* = events x metrics.
    """
    rng = np.random.default_rng(seed)
    models = [DeviceAnomalyModel(seed=seed, **model_kwargs) for _ in range(n_devices)]
    work, clock = _workload(rng, n_devices, n_metrics, batch_min, batch_max, warmup_rounds + rounds, step_s)
    events = 0
    elapsed = 0.0
    for r, batches in enumerate(work):
        for m, (ts, metrics) in zip(models, batches):
            t = time.perf_counter()
            m.score_learn_many(ts, metrics)
            dt = time.perf_counter() - t
            if r >= warmup_rounds:
                elapsed += dt
                events += len(ts)
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


def measure_bank_throughput(
    n_devices: int = 1000,
    n_metrics: int = 3,
    batch_min: int = 10,
    batch_max: int = 50,
    rounds: int = 6,
    warmup_rounds: int = 2,
    step_s: float = 60.0,
    seed: int = 0,
    **model_kwargs: object,
) -> dict[str, float]:
    """The same readings as `measure_throughput`'s batch path (same seed), through one `DeviceBank`: each round is
    one `score_learn_batch` call for all devices, their rows interleaved."""
    from online_models.anomaly.bank import DeviceBank

    rng = np.random.default_rng(seed)
    bank = DeviceBank(capacity=n_devices, seed=seed, **model_kwargs)
    slots = np.array([bank.slot(d) for d in range(n_devices)])
    work, _ = _workload(rng, n_devices, n_metrics, batch_min, batch_max, warmup_rounds + rounds, step_s)
    events = 0
    elapsed = 0.0
    for r, batches in enumerate(work):
        lens = [len(ts) for ts, _ in batches]
        dev = np.repeat(slots, lens)
        order = np.argsort(np.concatenate([np.arange(n) / n for n in lens]), kind="stable")  # interleaved
        ts = np.concatenate([b[0] for b in batches])[order]
        cols = {k: np.concatenate([b[1][k] for b in batches])[order] for k in batches[0][1]}
        t = time.perf_counter()
        bank.score_learn_batch(dev[order], ts, cols)
        dt = time.perf_counter() - t
        if r >= warmup_rounds:
            elapsed += dt
            events += len(ts)
    eps = events / elapsed if elapsed > 0 else 0.0
    size = bank.bytes_per_device()
    return {
        "devices": float(n_devices),
        "batch_events": float(events),
        "batch_seconds": elapsed,
        "batch_events_per_s": eps,
        "batch_readings_per_s": eps * n_metrics,
        "bytes_per_device": size["total"],
        "bytes_per_device_arrays": size["arrays"],
        "bytes_per_device_forecasters": size["forecasters"],
    }


def hold_devices(n_devices: int = 10_000, rows: int = 300, n_metrics: int = 3, bank: bool = True,
                 seed: int = 0, per_call: int = 100) -> dict[str, float]:
    """RSS of this process before and after it holds ``n_devices`` devices that each learned ``rows`` readings
    (50 per device at a time, ``per_call`` devices per bank call): in one `DeviceBank`, or (``bank=False``) one
    `DeviceAnomalyModel` each.
    Run it in a fresh process (`measure_memory`): RSS only grows."""
    from online_models.anomaly.bank import DeviceBank

    # the code's own memory (imports, compiled kernels, a first forecaster training) before the baseline
    warm = DeviceBank(capacity=1, seed=seed, train_every=8)
    warm_ts = 1_700_000_000.0 + 300.0 * np.arange(64)
    warm.score_learn_batch(np.full(64, warm.slot(0)), warm_ts, {"m0": np.sin(warm_ts)})
    DeviceAnomalyModel(seed=seed, train_every=8).score_learn_many(warm_ts, {"m0": np.sin(warm_ts)})
    del warm
    base = rss_mb()
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    if bank:
        b = DeviceBank(capacity=n_devices, seed=seed)
        slots = np.array([b.slot(d) for d in range(n_devices)])
    else:
        models = [DeviceAnomalyModel(seed=seed) for _ in range(n_devices)]
    step = 50
    clock = 1_700_000_000.0
    for lo in range(0, rows, step):
        k = min(step, rows - lo)
        ts1 = clock + np.arange(k) * 300.0
        clock = float(ts1[-1]) + 300.0
        if bank:  # calls of `per_call` devices x k readings (a worker's batches are not larger)
            for first in range(0, n_devices, per_call):
                part = slots[first:first + per_call]
                ts = np.tile(ts1, len(part))
                dev = np.repeat(part, k)
                cols = {f"m{j}": 10.0 * (1 + j) + np.sin(ts / 86400.0 * 6.283 + dev) + rng.normal(0, 0.3, len(ts))
                        for j in range(n_metrics)}
                b.score_learn_batch(dev, ts, cols)
        else:
            for d, m in enumerate(models):
                m.score_learn_many(ts1, {f"m{j}": 10.0 * (1 + j) + np.sin(ts1 / 86400.0 * 6.283 + d) + rng.normal(0, 0.3, k)
                                         for j in range(n_metrics)})
    out = {"devices": float(n_devices), "rows_per_device": float(rows), "rss_before_mb": base, "rss_after_mb": rss_mb(),
           "seconds": time.perf_counter() - t0}
    if bank:
        out |= {f"bytes_per_device_{k}": v for k, v in b.bytes_per_device().items()}
    return out


def measure_memory(n_devices: int = 10_000, rows: int = 300, bank: bool = True) -> dict[str, float]:
    """`hold_devices` in a fresh Python process (so the RSS is that of a process holding only these devices)."""
    import json
    import subprocess
    import sys

    code = ("import json; from wharf.bench.anomaly import hold_devices; "
            f"print(json.dumps(hold_devices({n_devices}, {rows}, bank={bank!r})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(n_devices: int = 1000, memory_devices: int = 10_000, memory_rows: int = 300,
           reference_memory: bool = False) -> str:
    """Per-device models vs the device bank on the same readings, the bank's bytes per device, and the RSS of a
    process holding ``memory_devices`` devices (the per-device models too with ``reference_memory``)."""
    ref = measure_throughput(n_devices=n_devices, one_by_one_events=300)
    bank = measure_bank_throughput(n_devices=n_devices)
    lines = [
        f"{n_devices} devices x 3 metrics, batches of 10-50 readings per device and round, 6 timed rounds (same readings):",
        f"  per-device models (measure_throughput, today's reference): {ref['batch_readings_per_s']:>10,.0f} readings/s",
        f"  device bank, one call per round (measure_bank_throughput):  {bank['batch_readings_per_s']:>10,.0f} readings/s"
        f"  ({bank['batch_readings_per_s'] / max(ref['batch_readings_per_s'], 1e-9):.1f}x)",
        f"  state per device: bank {bank['bytes_per_device'] / 1024:.1f} KiB ({bank['bytes_per_device_arrays'] / 1024:.1f} KiB arrays"
        f" + {bank['bytes_per_device_forecasters'] / 1024:.1f} KiB forecasters); per-device model pickled"
        f" {ref['pickled_bytes_per_device'] / 1024:.1f} KiB",
    ]
    runs = [("device bank", True)] + ([("per-device models", False)] if reference_memory else [])
    for name, use_bank in runs:
        mem = measure_memory(memory_devices, memory_rows, bank=use_bank)
        lines.append(f"  process holding {memory_devices:,} devices ({name}, {memory_rows} readings learned each): RSS "
                     f"{mem['rss_after_mb']:,.0f} MB ({mem['rss_before_mb']:,.0f} MB before the devices; "
                     f"{(mem['rss_after_mb'] - mem['rss_before_mb']) * 1024 / memory_devices:.1f} KiB per device)")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - manual runs
    import json

    print(json.dumps(measure_throughput(), indent=2))
