"""Throughput and latency of the recommender on simulated shop clicks (`wharf bench commerce`).

Events are generated before timing; `learn_one` is timed over the whole stream
(wall clock and process CPU time: on a shared machine CPU time is the fairer
single-core figure), then `recommend` is timed call by call for random known
users against a catalogue of `n_items` registered items.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass

import numpy as np

from online_models.recommender.config import RecommenderConfig
from online_models.recommender.model import OnlineRecommender


@dataclass(slots=True)
class BenchResult:
    events: int
    items: int
    users: int
    learn_events_per_s: float
    learn_events_per_cpu_s: float
    recommend_calls: int
    recommend_p50_ms: float
    recommend_p99_ms: float
    recommend_max_ms: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def format(self) -> str:
        return (
            f"learn_one: {self.learn_events_per_s:,.0f} events/s wall, {self.learn_events_per_cpu_s:,.0f} events/s CPU "
            f"({self.events:,} events, {self.items:,} items, {self.users:,} users)\n"
            f"recommend(k=10): p50 {self.recommend_p50_ms:.2f} ms, p99 {self.recommend_p99_ms:.2f} ms, "
            f"max {self.recommend_max_ms:.2f} ms over {self.recommend_calls:,} calls"
        )


def bench_commerce(
    n_events: int = 50_000,
    n_items: int = 10_000,
    n_users: int = 5_000,
    recommend_calls: int = 1_000,
    seed: int = 0,
    config: RecommenderConfig | None = None,
) -> BenchResult:
    """Learn `n_events` simulated clicks, then time `recommend_calls` recommendations."""
    from wharf.simulator import ShopConfig, ShopSimulator

    sim = ShopSimulator(ShopConfig(seed=seed, n_items=n_items, n_users=n_users))
    events = list(sim.events(n_events))
    model = OnlineRecommender(config or RecommenderConfig(seed=seed))
    for item in sim.catalogue():
        model.add_item(item["item_id"], item["category"], item["price"])

    wall, cpu = time.perf_counter(), time.process_time()
    for ev in events:
        model.learn_one(ev)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu

    rng = random.Random(seed)
    users = list(model.users)
    latencies = []
    for _ in range(recommend_calls):
        user = users[rng.randrange(len(users))]
        t = time.perf_counter()
        model.recommend(user, 10)
        latencies.append(time.perf_counter() - t)
    lat = np.array(latencies) * 1e3
    return BenchResult(
        events=len(events),
        items=len(model.index),
        users=len(users),
        learn_events_per_s=len(events) / wall,
        learn_events_per_cpu_s=len(events) / max(cpu, 1e-9),
        recommend_calls=recommend_calls,
        recommend_p50_ms=float(np.percentile(lat, 50)),
        recommend_p99_ms=float(np.percentile(lat, 99)),
        recommend_max_ms=float(lat.max()),
    )


if __name__ == "__main__":
    print(bench_commerce().format())
