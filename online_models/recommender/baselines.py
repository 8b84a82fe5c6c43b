"""Plain baselines the recommender is measured against, learned on the same stream.

* `PopularityBaseline`: global count of positive interactions, no decay.
* `CooccurrenceBaseline`: item-to-item co-occurrence counts over each user's
  whole history (each unordered pair of distinct items once per user), scored
  as `sum(C[i, j] for i in history(user))`: no decay, no sessions, no order.

Both follow the same `learn_one(event)` / `recommend(user_id, k, exclude)`
protocol as `OnlineRecommender` but return plain item ids.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

_DENSE_LIMIT = 12_000  # items; beyond this the co-occurrence counts go to dicts (slower, same result)


class _Rows:
    def __init__(self) -> None:
        self.row: dict[str, int] = {}
        self.ids: list[str] = []

    def get(self, item_id: str) -> int:
        r = self.row.get(item_id)
        if r is None:
            r = self.row[item_id] = len(self.ids)
            self.ids.append(item_id)
        return r

    def rows_of(self, items: Collection[str]) -> list[int]:
        return [r for r in (self.row.get(i) for i in items) if r is not None]


def _top_k(score: np.ndarray, k: int, ids: list[str]) -> list[str]:
    n = len(score)
    k = min(k, n)
    if k <= 0:
        return []
    top = np.argpartition(-score, k - 1)[:k] if k < n else np.arange(n)
    top = top[np.argsort(-score[top], kind="stable")]
    return [ids[r] for r in top if score[r] != -np.inf]


def _positive(event: Mapping[str, Any], action_weights: Mapping[str, float] | None) -> bool:
    if action_weights is None:
        return event.get("action") != "remove"
    return action_weights.get(event.get("action") or "view", 1.0) > 0


class PopularityBaseline:
    def __init__(self, action_weights: Mapping[str, float] | None = None) -> None:
        self.rows = _Rows()
        self.counts = np.zeros(1024)
        self.action_weights = action_weights

    def learn_one(self, event: Mapping[str, Any]) -> None:
        r = self.rows.get(str(event["item_id"]))
        if r >= len(self.counts):
            self.counts = np.concatenate([self.counts, np.zeros(len(self.counts))])
        if _positive(event, self.action_weights):
            self.counts[r] += 1

    def recommend(self, user_id: str, k: int = 10, exclude: Collection[str] | None = None) -> list[str]:
        score = self.counts[: len(self.rows.ids)].copy()
        if exclude:
            score[self.rows.rows_of(exclude)] = -np.inf
        return _top_k(score, k, self.rows.ids)


class CooccurrenceBaseline:
    def __init__(self, action_weights: Mapping[str, float] | None = None) -> None:
        self.rows = _Rows()
        self.history: dict[str, list[int]] = {}
        self.seen: dict[str, set[int]] = {}
        self.dense: np.ndarray | None = np.zeros((256, 256), dtype=np.float32)
        self.sparse: dict[int, dict[int, float]] = {}
        self.popularity = PopularityBaseline(action_weights)
        self.popularity.rows = self.rows  # one row numbering for both
        self.action_weights = action_weights

    def _ensure(self, n: int) -> None:
        if self.dense is None or n <= self.dense.shape[0]:
            return
        size = self.dense.shape[0]
        while size < n:
            size *= 2
        if size > _DENSE_LIMIT:
            size = max(n, _DENSE_LIMIT)
        if n > _DENSE_LIMIT:
            m = self.dense
            nz = np.nonzero(m)
            for i, j in zip(*nz, strict=True):
                self.sparse.setdefault(int(i), {})[int(j)] = float(m[i, j])
            self.dense = None
            return
        bigger = np.zeros((size, size), dtype=np.float32)
        old = self.dense.shape[0]
        bigger[:old, :old] = self.dense
        self.dense = bigger

    def learn_one(self, event: Mapping[str, Any]) -> None:
        self.popularity.learn_one(event)
        r = self.rows.get(str(event["item_id"]))
        self._ensure(len(self.rows.ids))
        if not _positive(event, self.action_weights):
            return
        user = str(event["user_id"])
        seen = self.seen.setdefault(user, set())
        if r in seen:
            return
        hist = self.history.setdefault(user, [])
        if hist:
            if self.dense is not None:
                self.dense[hist, r] += 1.0
                self.dense[r, hist] += 1.0
            else:
                sp = self.sparse
                row_r = sp.setdefault(r, {})
                for i in hist:
                    row_i = sp.setdefault(i, {})
                    row_i[r] = row_i.get(r, 0.0) + 1.0
                    row_r[i] = row_r.get(i, 0.0) + 1.0
        hist.append(r)
        seen.add(r)

    def recommend(self, user_id: str, k: int = 10, exclude: Collection[str] | None = None) -> list[str]:
        n = len(self.rows.ids)
        hist = self.history.get(str(user_id))
        if not hist:
            return self.popularity.recommend(user_id, k, exclude)
        if self.dense is not None:
            score = self.dense[hist, :n].sum(axis=0, dtype=np.float64)
        else:
            score = np.zeros(n)
            for i in hist:
                row = self.sparse.get(i)
                if row:
                    score[list(row)] += list(row.values())
        pop = self.popularity.counts[:n]
        score += pop / (pop.max() + 1.0)  # < 1: breaks ties and fills, never outranks a co-count
        score[hist] = -np.inf
        if exclude:
            score[self.rows.rows_of(exclude)] = -np.inf
        return _top_k(score, k, self.rows.ids)
