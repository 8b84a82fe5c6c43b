"""Dense NumPy caches over all items, derived from the `ItemState` store.

`recommend` must score ~10k items in a few milliseconds, which per-item Python
objects cannot do; these arrays are a *cache* of the item store (factors, bias,
popularity on a shared landmark, category code, active flag), rebuilt from it by
`ItemIndex.rebuild` after a restart, and written row by row whenever an item's
state changes. They hold nothing the item store does not. Their row numbers are
also the names of neighbours in the items' co-occurrence rows (`cooc.py`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from online_models.recommender.state import ItemState


class ItemIndex:
    """Row numbers for item ids plus the dense arrays indexed by them."""

    def __init__(self, dim: int, capacity: int = 1024) -> None:
        self.dim = dim
        self.row: dict[str, int] = {}
        self.ids: list[str] = []
        self.categories: dict[str, int] = {}
        self._alloc(capacity)

    def _alloc(self, capacity: int) -> None:
        self.names = np.empty(capacity, dtype=object)  # `ids` as an array: a row's neighbours' ids in one take
        self.q = np.zeros((capacity, self.dim), dtype=np.float32)
        self.bias = np.zeros(capacity, dtype=np.float32)
        self.popular = np.zeros(capacity, dtype=np.float64)
        self.trending = np.zeros(capacity, dtype=np.float64)
        self.category = np.full(capacity, -1, dtype=np.int32)
        self.active = np.zeros(capacity, dtype=bool)

    def __len__(self) -> int:
        return len(self.ids)

    def _grow(self) -> None:
        old = (self.q, self.bias, self.popular, self.trending, self.category, self.active, self.names)
        n = len(self.ids)
        self._alloc(max(1024, 2 * self.q.shape[0]))
        for new, prev in zip((self.q, self.bias, self.popular, self.trending, self.category, self.active, self.names), old,
                             strict=True):
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
            self.names[row] = state.item_id
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

    def remove(self, item_ids: Iterable[str]) -> np.ndarray | None:
        """Drop these items' rows; the others keep their order and move down, so the index numbers its items as one
        rebuilt from the store would (a restored model sums over them in the same order). O(items) in NumPy and
        one dict build: `OnlineRecommender` evicts in batches. Returns each old row's new number (-1: dropped), for
        the co-occurrence rows that name rows (None: nothing dropped).
        Category codes no row uses any more are dropped too (a code's number does not change any score)."""
        rows = self.rows_of(item_ids)
        if not rows:
            return None
        n = len(self.ids)
        keep = np.ones(n, dtype=bool)
        keep[rows] = False
        m = int(keep.sum())
        for a in (self.q, self.bias, self.popular, self.trending, self.category, self.active, self.names):
            a[:m] = a[:n][keep]
        self.names[m:n] = None
        self.active[m:n] = False
        self.category[m:n] = -1
        self.ids = [i for i, k in zip(self.ids, keep.tolist(), strict=True) if k]
        self.row = {item_id: r for r, item_id in enumerate(self.ids)}
        self._drop_unused_categories(m)
        new_row = np.cumsum(keep, dtype=np.int32) - 1
        new_row[~keep] = -1
        return new_row

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
