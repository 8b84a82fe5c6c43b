"""Prequential evaluation of the online recommender on interaction logs and on the simulator.

Next-interaction protocol (`evaluate_interactions`): events are replayed in time
order. An event is *eligible* when its action is positive (not `remove`) and
the user has not interacted with the item before. Before the event is learned,
each model ranks every item it knows that the user has not interacted with, and
HR@k (the item is in the top k) and NDCG@k (1/log2(rank+2)) are recorded. An
item no model has seen yet counts as a miss for all of them. For speed only a
deterministic sample is ranked: the eligible events whose running number is a
multiple of `every` (`every=1`: all; default: chosen so that about `max_evals`
are ranked). Every event is learned by every model.

Models in the same run: `wharf` (`OnlineRecommender`), `cooccurrence` (plain
counts over the user's whole history, popularity for ties) and `popular`
(global counts).

Rating protocol (`evaluate_ratings`): predict the rating, then learn it; MAE
and RMSE of online biased MF against the global mean and a bias-only model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from online_models.recommender import OnlineRecommender, RecommenderConfig
from online_models.recommender.baselines import CooccurrenceBaseline, PopularityBaseline
from online_models.recommender.rating import OnlineRatingMF

Column = str | int


@dataclass
class EvalReport:
    """Metric per model, plus what was run."""

    metrics: dict[str, dict[str, float]]
    n_events: int
    n_eligible: int
    n_evaluated: int
    every: int
    seconds: float
    k: int = 10
    notes: dict[str, Any] = field(default_factory=dict)

    def ratio(self, metric: str, model: str = "wharf", baseline: str = "cooccurrence") -> float:
        base = self.metrics[baseline][metric]
        return self.metrics[model][metric] / base if base else math.inf

    def format(self) -> str:
        names = sorted({m for v in self.metrics.values() for m in v})
        lines = [f"{'model':<14}" + "".join(f"{n:>12}" for n in names)]
        for model, vals in self.metrics.items():
            lines.append(f"{model:<14}" + "".join(f"{vals.get(n, float('nan')):>12.4f}" for n in names))
        lines.append(
            f"events={self.n_events} eligible={self.n_eligible} evaluated={self.n_evaluated} "
            f"every={self.every} k={self.k} seconds={self.seconds:.1f}"
        )
        if "wharf" in self.metrics and "cooccurrence" in self.metrics and f"hr@{self.k}" in names:
            lines.append(
                f"wharf / cooccurrence: HR@{self.k} x{self.ratio(f'hr@{self.k}'):.2f}, "
                f"NDCG@{self.k} x{self.ratio(f'ndcg@{self.k}'):.2f}; "
                f"wharf / popular: HR@{self.k} x{self.ratio(f'hr@{self.k}', baseline='popular'):.2f}"
            )
        return "\n".join(lines)


# ------------------------------------------------------------------- reading


def _column(df: pd.DataFrame, col: Column) -> pd.Series:
    if isinstance(col, int) or (isinstance(col, str) and col.isdigit() and col not in df.columns):
        return df.iloc[:, int(col)]
    return df[col]


def _to_seconds(values: pd.Series) -> pd.Series:
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all():
        return numeric.astype(float)
    parsed = pd.to_datetime(values, utc=True, errors="raise")
    return (parsed - pd.Timestamp(0, tz="UTC")).dt.total_seconds()


def read_interactions(
    path: str | Path,
    *,
    user_col: Column,
    item_col: Column,
    time_cols: Sequence[Column] = (),
    action_col: Column | None = None,
    rating_col: Column | None = None,
    sep: str = ",",
    header: bool = True,
    max_rows: int | None = None,
) -> list[dict[str, Any]]:
    """A delimited log as event dicts (user_id, item_id, ts, action?, rating?), sorted in time.

    Columns are named by header name or 0-based position. Several time columns
    sort lexicographically in the order given (stable: file order breaks ties);
    `ts` comes from the first one (numeric seconds or any date pandas parses),
    or, when it is a date and the second a time of day, from both together.
    Without time columns the file order is the time order.
    """
    df = pd.read_csv(
        path, sep=sep, header=0 if header else None, dtype=str, nrows=max_rows, engine="python" if len(sep) > 1 else "c"
    )
    out = pd.DataFrame({"user_id": _column(df, user_col).str.strip(), "item_id": _column(df, item_col).str.strip()})
    if time_cols:
        times = [_column(df, c) for c in time_cols]
        try:
            ts = _to_seconds(times[0])
        except (ValueError, TypeError):
            ts = _to_seconds(times[0] + " " + times[1]) if len(times) > 1 else None
            if ts is None:
                raise
        keys = []
        for i, t in enumerate(times):
            key = f"_t{i}"
            try:
                out[key] = _to_seconds(t)
            except (ValueError, TypeError):
                out[key] = t
            keys.append(key)
        out["ts"] = ts
        out = out.sort_values(keys, kind="mergesort").drop(columns=keys)
    else:
        out["ts"] = np.arange(len(out), dtype=float) + 1.0
    if action_col is not None:
        out["action"] = _column(df, action_col).loc[out.index].str.strip()
    if rating_col is not None:
        out["rating"] = pd.to_numeric(_column(df, rating_col).loc[out.index])
    return out.to_dict("records")


# ------------------------------------------------------------- implicit (HR)


def _rank_metrics(recs: list[str], target: str, k: int) -> tuple[float, float]:
    for rank, item in enumerate(recs[:k]):
        if item == target:
            return 1.0, 1.0 / math.log2(rank + 2)
    return 0.0, 0.0


def evaluate_interactions(
    events: Iterable[Mapping[str, Any]],
    *,
    k: int = 10,
    every: int | None = None,
    max_evals: int = 10_000,
    config: RecommenderConfig | None = None,
    baselines: bool = True,
    n_events_hint: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """Prequential HR@k / NDCG@k of `OnlineRecommender` and the baselines on one stream (`progress(done, total)`
    every 1,000 events)."""
    events = list(events)
    config = config or RecommenderConfig()
    if every is None:
        every = max(1, math.ceil((n_events_hint or len(events)) / max_evals))
    weights = config.action_weights
    models: dict[str, Any] = {"wharf": OnlineRecommender(config)}
    if baselines:
        models["cooccurrence"] = CooccurrenceBaseline(weights)
        models["popular"] = PopularityBaseline(weights)
    sums = {name: [0.0, 0.0] for name in models}
    seen: dict[str, set[str]] = {}
    n_eligible = n_evaluated = 0
    start = time.perf_counter()
    for i, ev in enumerate(events):
        if progress is not None and i % 1000 == 0:
            progress(i, len(events))
        user, item = str(ev["user_id"]), str(ev["item_id"])
        user_seen = seen.setdefault(user, set())
        if config.weight(ev.get("action")) > 0 and item not in user_seen:
            if n_eligible % every == 0:
                n_evaluated += 1
                ts = ev.get("ts")
                for name, model in models.items():
                    if name == "wharf":
                        recs = [r.item_id for r in model.recommend(user, k, exclude=user_seen, ts=ts)]
                    else:
                        recs = model.recommend(user, k, exclude=user_seen)
                    hit, gain = _rank_metrics(recs, item, k)
                    sums[name][0] += hit
                    sums[name][1] += gain
            n_eligible += 1
        for model in models.values():
            model.learn_one(ev)
        user_seen.add(item)
    denom = max(n_evaluated, 1)
    metrics = {name: {f"hr@{k}": s[0] / denom, f"ndcg@{k}": s[1] / denom} for name, s in sums.items()}
    report = EvalReport(metrics, len(events), n_eligible, n_evaluated, every, time.perf_counter() - start, k)
    report.notes["blend"] = dict(models["wharf"].state.blend)
    return report


# ------------------------------------------------------------ explicit (RMSE)


def evaluate_ratings(events: Iterable[Mapping[str, Any]]) -> EvalReport:
    """Prequential MAE / RMSE: biased MF vs. bias-only vs. global mean, predict-then-learn."""
    models = {"wharf_mf": OnlineRatingMF(), "bias": OnlineRatingMF(use_factors=False)}
    err = {name: [0.0, 0.0] for name in [*models, "global_mean"]}
    mean = 0.0
    n = 0
    start = time.perf_counter()
    for ev in events:
        rating = float(ev["rating"])
        user, item = str(ev["user_id"]), str(ev["item_id"])
        if n:
            for name, model in models.items():
                e = rating - model.predict_one(user, item)
                err[name][0] += abs(e)
                err[name][1] += e * e
            e = rating - mean
            err["global_mean"][0] += abs(e)
            err["global_mean"][1] += e * e
        n += 1
        mean += (rating - mean) / n
        for model in models.values():
            model.learn_one(user, item, rating)
    m = max(n - 1, 1)
    metrics = {name: {"mae": s[0] / m, "rmse": math.sqrt(s[1] / m)} for name, s in err.items()}
    return EvalReport(metrics, n, n, max(n - 1, 0), 1, time.perf_counter() - start, k=0)


# ---------------------------------------------------------------- front doors


def evaluate_file(
    path: str | Path,
    *,
    user_col: Column,
    item_col: Column,
    time_cols: Sequence[Column] = (),
    action_col: Column | None = None,
    rating_col: Column | None = None,
    sep: str = ",",
    header: bool = True,
    mode: str = "implicit",
    k: int = 10,
    every: int | None = None,
    max_evals: int = 10_000,
    max_rows: int | None = None,
    time_scale: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """`wharf evaluate recommender FILE`: read a delimited log and run one protocol on it.

    mode "implicit": next-interaction HR@k/NDCG@k (the rating, if any, is ignored);
    mode "rating": MAE/RMSE (needs `rating_col`). `time_scale` multiplies every
    half-life and the session gap of the recommender (logs slower than a shop).
    """
    events = read_interactions(
        path,
        user_col=user_col,
        item_col=item_col,
        time_cols=time_cols,
        action_col=action_col,
        rating_col=rating_col,
        sep=sep,
        header=header,
        max_rows=max_rows,
    )
    if mode == "rating":
        if rating_col is None:
            raise ValueError("mode 'rating' needs a rating column")
        return evaluate_ratings(events)
    if mode != "implicit":
        raise ValueError(f"unknown mode {mode!r}: use 'implicit' or 'rating'")
    config = RecommenderConfig()
    if time_scale != 1.0:
        config = config.for_time_scale(time_scale)
    return evaluate_interactions(events, k=k, every=every, max_evals=max_evals, config=config, progress=progress)
