"""CPU per reading of the per-device models' batch path: `measure_throughput`'s workload (same seed), timed by wall
clock and by this thread's CPU time (docs/performance.md, issue 19).

`PYTHONPATH=. python scripts/anomaly_model_cpu.py [devices]` (default 1,000; 3 metrics, batches of 10-50 readings,
6 timed rounds after 2 warm-up rounds). On a shared machine the wall-clock rate includes the time other jobs took;
the CPU time does not: run it alternately in the two trees being compared (A, B, B, A, ...).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from online_models.anomaly.model import DeviceAnomalyModel
from wharf.bench.anomaly import _workload


def main(n_devices: int, n_metrics: int = 3, rounds: int = 6, warmup: int = 2) -> dict[str, float]:
    rng = np.random.default_rng(0)
    models = [DeviceAnomalyModel(seed=0) for _ in range(n_devices)]
    work, _ = _workload(rng, n_devices, n_metrics, 10, 50, warmup + rounds, 60.0)
    readings, wall, cpu = 0, 0.0, 0.0
    for r, batches in enumerate(work):
        w0, c0 = time.perf_counter(), time.thread_time()
        for m, (ts, metrics) in zip(models, batches):
            m.score_learn_many(ts, metrics)
        if r >= warmup:
            wall += time.perf_counter() - w0
            cpu += time.thread_time() - c0
            readings += sum(len(b[0]) for b in batches) * n_metrics
    return {"readings_per_s_wall": round(readings / wall), "readings_per_cpu_s": round(readings / cpu),
            "cpu_us_per_reading": round(cpu / readings * 1e6, 2)}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)))
