"""The recommender's prequential evaluation (`online_models.evaluation.recommender`) on the shop simulator's clicks:
here, above the models, since the simulator is Wharf's and the models know no part of it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from online_models.evaluation.recommender import EvalReport, evaluate_interactions
from online_models.recommender import RecommenderConfig
from wharf.simulator.shop import ShopConfig, ShopSimulator


def evaluate_simulator(
    n_events: int = 50_000,
    *,
    seed: int = 0,
    k: int = 10,
    every: int | None = None,
    max_evals: int = 10_000,
    config: RecommenderConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
    **shop: Any,
) -> EvalReport:
    """The same next-interaction protocol on `n_events` clicks of the shop simulator."""
    events = ShopSimulator(ShopConfig(seed=seed, **shop)).events(n_events)
    return evaluate_interactions(events, k=k, every=every, max_evals=max_evals, config=config, n_events_hint=n_events,
                                 progress=progress)
