"""`RecentKeys`: the one bounded window of recently seen keys, oldest first.

Every path that must notice a copy or remember what was recently active keeps one: the raw readings' window per
partition (MQTT redeliveries, `streams/sinks/ingest.py`), each device's window in its checkpointed state
(`agents/devices.py`), the stored alarm revisions (`agents/alerts.py`) and the recommender shards' users and items
active since their last snapshot (`streams/learning/shard.py`).

Why two dicts: a plain dict is the fastest ordered set CPython has, but forgetting its oldest key with
`del d[next(iter(d))]` leaves a dead slot at the front that every later `next(iter(d))` steps over until the dict
is next resized: a full 50,000-key window took 11-61 us a key instead of 0.45 (docs/performance.md, "The broker's
first minutes"). Here new keys go into `_new`; the oldest are forgotten from `_old` in the order `_order` recorded
when `_new` became `_old`, never by iterating a dict. An `OrderedDict` avoids the dead slots too, but copying one
(a checkpoint copies every changed device's window) cost 87 against 3.6 us for 1,024 keys.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class RecentKeys(Generic[K]):
    """At most `capacity` keys; adding one more forgets the oldest.

    The keys, oldest first, are `_old`'s (insertion order; a key touched since left it) then `_new`'s. `_order` is
    `_old`'s keys as they were when it took over from `_new` (never changed, so copies share it) and `_at` how many
    of them were forgotten."""

    __slots__ = ("_at", "_new", "_old", "_order", "capacity", "copies")

    def __init__(self, capacity: int, keys: Iterable[K] = ()) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.copies = 0  # keys `seen` found already here
        self.clear()
        new = dict.fromkeys(keys)
        if len(new) > capacity:
            new = dict.fromkeys(list(new)[-capacity:])
        self._new = new

    def seen(self, key: K) -> bool:
        """True if `key` is here already (a copy; its place is kept); otherwise remember it as the newest."""
        if key in self._new or key in self._old:
            self.copies += 1
            return True
        self._new[key] = None
        if len(self._old) + len(self._new) > self.capacity:
            self._forget_oldest()
        return False

    def touch(self, key: K) -> None:
        """Remember `key` as the newest, also if it is here already (least-recently-used order)."""
        if key in self._new:
            del self._new[key]
        else:
            self._old.pop(key, None)
        self._new[key] = None
        if len(self._old) + len(self._new) > self.capacity:
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        old, order = self._old, self._order
        while True:
            if self._at == len(order):  # `_old` is empty: `_new` takes over
                self._old, self._new, self._order, self._at = self._new, {}, list(self._new), 0
                old, order = self._old, self._order
            key = order[self._at]
            self._at += 1
            if key in old:  # else touched since (gone from `_old`): try the next
                del old[key]
                return

    def copy(self) -> RecentKeys[K]:
        """The same keys in the same order, copied in C (a checkpoint copies every changed device's window under
        the owner's lock: rebuilding it key by key took 68 us for 1,024 keys)."""
        out = RecentKeys.__new__(RecentKeys)
        out.capacity, out.copies, out._order, out._at = self.capacity, self.copies, self._order, self._at
        out._old, out._new = self._old.copy(), self._new.copy()
        return out

    def newest(self, n: int) -> list[K]:
        """The `n` newest keys, oldest first."""
        keys = list(self)
        return keys[-n:] if n > 0 else []

    def clear(self) -> None:
        self._old: dict[K, None] = {}
        self._new: dict[K, None] = {}
        self._order: list[K] = []
        self._at = 0

    def __contains__(self, key: object) -> bool:
        return key in self._new or key in self._old

    def __iter__(self) -> Iterator[K]:
        yield from self._old
        yield from self._new

    def __len__(self) -> int:
        return len(self._old) + len(self._new)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RecentKeys) and self.capacity == other.capacity and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment] - mutable

    def __repr__(self) -> str:
        return f"RecentKeys({len(self)}/{self.capacity})"
