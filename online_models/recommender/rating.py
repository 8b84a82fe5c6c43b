"""Explicit ratings: online biased matrix factorisation and a bias-only baseline.

Both predict `mu + b_user + b_item (+ p_user . q_item)` and learn by one SGD
step per rating, so a prequential run measures MAE/RMSE of the rating about to
be learned. Per-user and per-item state is a small dict entry, as in the
implicit recommender.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True)
class _Entity:
    bias: float = 0.0
    count: int = 0
    factors: np.ndarray | None = None


@dataclass
class OnlineRatingMF:
    dim: int = 16
    learning_rate: float = 0.01
    bias_learning_rate: float = 0.02
    regularization: float = 0.05
    init_scale: float = 0.05
    use_factors: bool = True
    seed: int = 0
    mean: float = 0.0
    count: int = 0
    lo: float = float("inf")
    hi: float = float("-inf")
    users: dict[str, _Entity] = field(default_factory=dict)
    items: dict[str, _Entity] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def _get(self, store: dict[str, _Entity], key: str) -> _Entity:
        e = store.get(key)
        if e is None:
            e = store[key] = _Entity()
            if self.use_factors:
                e.factors = (self._rng.standard_normal(self.dim) * self.init_scale).astype(np.float64)
        return e

    def predict_one(self, user_id: str, item_id: str) -> float:
        if not self.count:
            return 0.0
        u, i = self.users.get(user_id), self.items.get(item_id)
        pred = self.mean + (u.bias if u else 0.0) + (i.bias if i else 0.0)
        if self.use_factors and u and i:
            pred += float(u.factors @ i.factors)
        return min(max(pred, self.lo), self.hi)

    def learn_one(self, user_id: str, item_id: str, rating: float) -> None:
        self.count += 1
        self.mean += (rating - self.mean) / self.count
        self.lo, self.hi = min(self.lo, rating), max(self.hi, rating)
        u, i = self._get(self.users, user_id), self._get(self.items, item_id)
        pred = self.mean + u.bias + i.bias
        if self.use_factors:
            pred += float(u.factors @ i.factors)
        err = rating - pred
        blr, reg = self.bias_learning_rate, self.regularization
        u.bias += blr * (err - reg * u.bias)
        i.bias += blr * (err - reg * i.bias)
        if self.use_factors:
            lr = self.learning_rate
            pu = u.factors.copy()
            u.factors += lr * (err * i.factors - reg * u.factors)
            i.factors += lr * (err * pu - reg * i.factors)
        u.count += 1
        i.count += 1
