"""Learning rate of the recommender in one process: `learn_one` and the shard update path, best of R fresh runs.

`python scripts/recommender_learn_rate.py [clicks] [runs]` (defaults 30,000 and 4): the shop simulator's clicks
(as `wharf bench commerce` makes them) through `_bench_learn_one` and `_bench_update_path` of
`wharf/bench/commerce.py`, each on a fresh model or shard, `runs` times; prints the best rate by wall clock and
by this process's CPU time. The best of several runs, and CPU time, are what a shared machine's noise leaves
comparable: run it alternately in the two trees being compared (A, B, A, B, ...).
"""

from __future__ import annotations

import gc
import sys
import time

from wharf.bench.commerce import _bench_learn_one, _bench_update_path
from wharf.simulator import ShopConfig, ShopSimulator


def main(clicks: int, runs: int) -> str:
    events = list(ShopSimulator(ShopConfig(seed=0, n_items=5000, n_users=5000)).events(clicks))
    shift = time.time() - events[-1]["ts"] - 1
    for e in events:  # recent times, as `wharf bench commerce` gives them
        e["ts"] += shift
    _bench_learn_one(events[:2000])  # kernels loaded, caches warm
    _bench_update_path(events[:2000])
    rates: dict[str, list[tuple[float, float]]] = {"learn_one": [], "update path": []}
    for _ in range(runs):
        for name, bench in (("learn_one", _bench_learn_one), ("update path", _bench_update_path)):
            gc.collect()
            cpu = time.process_time()
            wall = bench(events)
            rates[name].append((wall, clicks / (time.process_time() - cpu)))
    return " | ".join(f"{name} best wall {max(w for w, _ in r):,.0f} cpu {max(c for _, c in r):,.0f} clicks/s"
                      for name, r in rates.items())


if __name__ == "__main__":
    print(main(int(sys.argv[1]) if len(sys.argv) > 1 else 30_000, int(sys.argv[2]) if len(sys.argv) > 2 else 4))
