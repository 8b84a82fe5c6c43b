"""Bounded state: which users and items to evict, least recently seen first (by event time).

Every new user or item id creates state that would otherwise live (and be checkpointed) forever, so a
shop with endless ids, hostile or just large, grew a model without bound. `OnlineRecommender` keeps at
most `max_users` / `max_items` and, optionally, forgets those idle longer than `user_idle_s` /
`item_idle_s`; this module holds the parts that do not need the model.

The order is a heap of (last seen, id) with lazy deletion: a touch that moves an entry's `last_ts`
pushes a new pair and leaves the old one behind, skipped when it surfaces; the heap is rebuilt from the
store when stale pairs outnumber live ones. So a touch is one O(log n) push, an eviction amortised
O(log n), and ties break by id: the order depends on the stored `last_ts` only, so a model restored from
a checkpoint evicts exactly what the live one would have.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, MutableMapping
from typing import Any


class LastSeen:
    """Least-recently-seen order of a store whose values carry `last_ts` (event time)."""

    def __init__(self, store: MutableMapping[str, Any]) -> None:
        self.store = store
        self.heap: list[tuple[float, str]] = []
        self.rebuild()

    def rebuild(self) -> None:
        self.heap = [(st.last_ts, key) for key, st in self.store.items()]
        heapq.heapify(self.heap)

    def touch(self, ts: float, key: str) -> None:
        """Record that `key`'s `last_ts` is now `ts` (call on creation and whenever it moves)."""
        heapq.heappush(self.heap, (ts, key))
        if len(self.heap) > 2 * len(self.store) + 1024:
            self.rebuild()

    def pop_oldest(self, before: float = float("inf")) -> str | None:
        """The stored key seen least recently, if seen before `before`, out of the order (the caller deletes it)."""
        heap, store = self.heap, self.store
        while heap:
            ts, key = heap[0]
            st = store.get(key)
            if st is None or st.last_ts != ts:
                heapq.heappop(heap)  # evicted or seen again since
                continue
            if ts >= before:
                return None
            heapq.heappop(heap)
            return key
        return None

    def oldest(self, n: int, before: float = float("inf")) -> Iterator[str]:
        """Up to `n` distinct keys seen least recently (before `before`), oldest first, each out of the order."""
        seen: set[str] = set()
        while len(seen) < n:
            key = self.pop_oldest(before)
            if key is None:
                return
            if key not in seen:  # a key created again at the same time has two equal pairs
                seen.add(key)
                yield key
