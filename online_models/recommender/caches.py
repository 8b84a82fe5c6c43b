"""Dense NumPy caches over all items, derived from the `ItemState` store.

`recommend` must score ~10k items in a few milliseconds, which per-item Python
objects cannot do; these arrays are a *cache* of the item store (factors, bias,
popularity on a shared landmark, category code, active flag), rebuilt from it by
`ItemIndex.rebuild` after a restart, and written row by row whenever an item's
state changes. They hold nothing the item store does not.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from online_models.recommender.state import ItemState

_COOC_CACHE_ROWS = 200_000  # co-occurrence rows kept as arrays (a few KB each); cleared when full


class ItemIndex:
    """Row numbers for item ids plus the dense arrays indexed by them."""

    def __init__(self, dim: int, capacity: int = 1024) -> None:
        self.dim = dim
        self.row: dict[str, int] = {}
        self.ids: list[str] = []
        self.categories: dict[str, int] = {}
        self._cooc: dict[str, tuple[tuple[int, int, int], np.ndarray, np.ndarray]] = {}
        self._alloc(capacity)

    def _alloc(self, capacity: int) -> None:
        self.q = np.zeros((capacity, self.dim), dtype=np.float32)
        self.bias = np.zeros(capacity, dtype=np.float32)
        self.popular = np.zeros(capacity, dtype=np.float64)
        self.trending = np.zeros(capacity, dtype=np.float64)
        self.category = np.full(capacity, -1, dtype=np.int32)
        self.active = np.zeros(capacity, dtype=bool)

    def __len__(self) -> int:
        return len(self.ids)

    def _grow(self) -> None:
        old = (self.q, self.bias, self.popular, self.trending, self.category, self.active)
        n = len(self.ids)
        self._alloc(max(1024, 2 * self.q.shape[0]))
        for new, prev in zip((self.q, self.bias, self.popular, self.trending, self.category, self.active), old, strict=True):
            new[:n] = prev[:n]

    def category_code(self, category: str | None) -> int:
        if category is None:
            return -1
        code = self.categories.get(category)
        if code is None:
            code = self.categories[category] = len(self.categories)
        return code

    def add(self, state: ItemState) -> int:
        row = self.row.get(state.item_id)
        if row is None:
            if len(self.ids) == self.q.shape[0]:
                self._grow()
            row = self.row[state.item_id] = len(self.ids)
            self.ids.append(state.item_id)
        self.write(row, state)
        return row

    def write(self, row: int, state: ItemState) -> None:
        if state.factors is not None:
            self.q[row] = state.factors
        self.bias[row] = state.bias
        self.category[row] = self.category_code(state.category)
        self.active[row] = state.active

    def write_popularity(self, row: int, state: ItemState, landmark: float, rate_pop: float, rate_trend: float) -> None:
        # Same landmark for every row, so rows compare without decaying all of them.
        self.popular[row] = state.popular * math.exp(rate_pop * (state.popular_ts - landmark))
        self.trending[row] = state.trending * math.exp(rate_trend * (state.trending_ts - landmark))

    def rebuild(self, states: Iterable[ItemState], landmark: float, rate_pop: float, rate_trend: float) -> None:
        for state in states:
            row = self.add(state)
            self.write_popularity(row, state, landmark, rate_pop, rate_trend)

    def cooc_arrays(self, state: ItemState, prior: float) -> tuple[np.ndarray, np.ndarray]:
        """An item's co-occurrence row as (index rows, P(j | item)), with `prior` pseudo-counts in the
        denominator: built once per change of the row, so a request adds each of the user's rows with
        one vector operation instead of a Python loop."""
        version = (state.cooc_pairs, id(state.cooc), len(state.cooc), prior)  # every pair moves cooc_pairs
        cache = self.__dict__.setdefault("_cooc", {})  # absent from indexes pickled before it existed
        hit = cache.get(state.item_id)
        if hit is not None and hit[0] == version:
            return hit[1], hit[2]
        if len(cache) >= _COOC_CACHE_ROWS:
            cache.clear()
        row = self.row
        rows = np.fromiter(map(row.__getitem__, state.cooc), dtype=np.int64, count=len(state.cooc))
        probs = np.fromiter(state.cooc.values(), dtype=np.float64, count=len(state.cooc))
        probs *= 1.0 / (state.cooc_total + prior * state.cooc_prior_scale())
        cache[state.item_id] = (version, rows, probs)
        return rows, probs

    def remove(self, item_ids: Iterable[str]) -> None:
        """Drop these items' rows; the others keep their order and move down, so the index numbers its items as one
        rebuilt from the store would (a restored model sums over them in the same order). O(items) in NumPy and
        one dict build: `OnlineRecommender` evicts in batches. The cached co-occurrence arrays name rows: all dropped.
        Category codes no row uses any more are dropped too (a code's number does not change any score)."""
        rows = self.rows_of(item_ids)
        if not rows:
            return
        n = len(self.ids)
        keep = np.ones(n, dtype=bool)
        keep[rows] = False
        m = int(keep.sum())
        for a in (self.q, self.bias, self.popular, self.trending, self.category, self.active):
            a[:m] = a[:n][keep]
        self.active[m:n] = False
        self.category[m:n] = -1
        self.ids = [i for i, k in zip(self.ids, keep.tolist(), strict=True) if k]
        self.row = {item_id: r for r, item_id in enumerate(self.ids)}
        self.__dict__.setdefault("_cooc", {}).clear()
        self._drop_unused_categories(m)

    def _drop_unused_categories(self, n: int) -> None:
        codes = self.category[:n]
        used = np.unique(codes[codes >= 0])
        if len(used) == len(self.categories):
            return
        remap = np.full(len(self.categories) + 1, -1, dtype=np.int32)  # code -1 (none) reads the last: -1
        remap[used] = np.arange(len(used), dtype=np.int32)
        codes[:] = remap[codes]
        names = {code: name for name, code in self.categories.items()}
        self.categories = {names[c]: i for i, c in enumerate(used.tolist())}

    def rows_of(self, item_ids: Iterable[str]) -> list[int]:
        row = self.row
        return [r for r in (row.get(i) for i in item_ids) if r is not None]
