"""Per-user, per-item and per-worker state of the online recommender.

Every value here is a small dataclass of plain data, so a Faust table keyed by user
(`UserState`) and one keyed by item (`ItemState`) can replace the plain dicts the
model uses by default. `GlobalState` is per worker (blend weights, RNG, a sample
of recent items); it is tiny and can live in a single-key table.

Time decay uses two encodings, both exact and lazy (nothing is touched on a
clock tick):

* a decayed scalar `(value, ts)`: the value at time `ts`; read or add at `t`
  by multiplying with `exp(-rate * (t - ts))` first;
* a forward-decayed map (co-occurrence row, category preferences): entries are
  stored multiplied by `exp(rate * (t_add - ref))` against a landmark `ref`, so
  adding is one multiply and the ratios between entries are the decayed ratios.
  When the factor would overflow the map is rescaled to a new landmark, O(row).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from typing import Any

import numpy as np

from schemas.state import StateType, StateTypes

_MAX_EXPONENT = 30.0  # rescale forward-decayed maps before exp() grows past ~1e13


def decayed(value: float, ts: float, t: float, rate: float) -> float:
    """`value` (as of `ts`) seen at time `t`."""
    return value * math.exp(-rate * (t - ts)) if t > ts and rate else value


def decayed_add(value: float, ts: float, amount: float, t: float, rate: float) -> tuple[float, float]:
    """Add `amount` at time `t`; returns the new `(value, ts)`. Late events are decayed back."""
    if t >= ts:
        return decayed(value, ts, t, rate) + amount, t
    return value + amount * math.exp(-rate * (ts - t)), ts


def forward_add(store: dict[str, float], ref: float, key: str, amount: float, t: float, rate: float) -> float:
    """Add `amount` at `t` to a forward-decayed map with landmark `ref`; returns the (maybe new) landmark."""
    exponent = rate * (t - ref)
    if exponent > _MAX_EXPONENT:
        shrink = math.exp(-exponent)
        for k in store:
            store[k] *= shrink
        ref, exponent = t, 0.0
    store[key] = store.get(key, 0.0) + amount * math.exp(exponent)
    return ref


@dataclass(slots=True)
class ItemState:
    """Everything the model knows about one item; written by events *on* this item
    (popularity, factors, the reverse co-occurrence pair) and by events on items
    that follow it in a user's history (its forward co-occurrence row)."""

    item_id: str
    category: str | None = None
    price: float | None = None
    active: bool = True
    cooc: dict[str, float] = field(default_factory=dict)
    """Forward-decayed weight of 'item -> other item' pairs, bounded to the top-N."""
    cooc_total: float = 0.0
    """Sum of all pair weights ever added (same scale as `cooc`), including pruned ones."""
    cooc_pairs: int = 0
    cooc_clock: float = 0.0
    """Decay clock of the row at its last pair: rate_s * ts + rate_pairs * pairs. It moves
    with time *and* with the row's own traffic, so a busy item forgets in hours and
    a rare one keeps its few pairs; an item nobody clicks keeps its evidence as is."""
    cooc_ref: float = 0.0
    """Landmark (in clock units) the row's entries are scaled against."""
    factors: np.ndarray | None = None
    bias: float = 0.0
    popular: float = 0.0
    popular_ts: float = 0.0
    trending: float = 0.0
    trending_ts: float = 0.0
    events: int = 0
    last_ts: float = 0.0
    """Event time it was last clicked or registered: the eviction order (`evict.LastSeen`)."""

    def add_pairs(self, pairs: Iterable[tuple[str, float]], t: float, rate_s: float, rate_pairs: float, top_n: int) -> None:
        """Add `(other, amount)` pairs at time `t`, in order; each moves the row's decay clock by one pair.
        One call per event and row: the reverse pairs of a click (up to `pair_window`) go in together."""
        cooc = self.cooc
        npairs = self.cooc_pairs
        clock = self.cooc_clock
        ref = self.cooc_ref
        total = self.cooc_total
        base = rate_s * t
        limit = top_n + (top_n >> 1)
        for other, amount in pairs:
            npairs += 1
            c = base + rate_pairs * npairs
            if c > clock:  # a late event is as old as the row, not older
                clock = c
            exponent = clock - ref
            if exponent > _MAX_EXPONENT or not cooc:
                if cooc:
                    shrink = math.exp(-exponent)
                    for k in cooc:
                        cooc[k] *= shrink
                    total *= shrink
                ref, exponent = clock, 0.0
            scaled = amount * math.exp(exponent)
            cooc[other] = cooc.get(other, 0.0) + scaled
            total += scaled
            if len(cooc) > limit:
                # Amortised O(1): prune back to top-N every N/2 new neighbours.
                cooc = dict(heapq.nlargest(top_n, cooc.items(), key=itemgetter(1)))
        self.cooc, self.cooc_pairs, self.cooc_clock, self.cooc_ref, self.cooc_total = cooc, npairs, clock, ref, total

    def cooc_prior_scale(self) -> float:
        """Factor that brings an unscaled pseudo-count to the row's scale (as of its last pair)."""
        return math.exp(self.cooc_clock - self.cooc_ref)


@dataclass(slots=True)
class UserState:
    """Everything the model knows about one user; written only by that user's events."""

    user_id: str
    recent: list[tuple[str, float, float, str]] = field(default_factory=list)
    """Last items as (item_id, weight, ts, session_id), oldest first, bounded."""
    session_id: str = ""
    session_seq: int = 0
    last_ts: float = 0.0
    purchased: dict[str, float] = field(default_factory=dict)
    """Purchased item -> ts (insertion ordered, bounded)."""
    factors: np.ndarray | None = None
    categories: dict[str, float] = field(default_factory=dict)
    """Forward-decayed category preference (negative after removals is clipped at read)."""
    categories_ref: float = 0.0
    events: int = 0


@dataclass(slots=True)
class GlobalState:
    """Per-worker state: blend weights, the RNG, landmarks and a sample for negatives."""

    blend: dict[str, float]
    rng_state: tuple = ()
    events: int = 0
    last_ts: float = 0.0
    landmark: float = 0.0
    """Landmark of the dense popularity caches (see `OnlineRecommender._rebuild_popularity`)."""
    recent_items: list[str] = field(default_factory=list)
    """Ring buffer of recently interacted items: popularity-proportional negative samples."""
    recent_pos: int = 0


def _user_state(user: UserState) -> dict[str, Any]:
    """A user's slots, `recent` as four columns: as a dozen 4-tuples it cost more to encode and decode than the rest."""
    state = dict(zip(UserState.__slots__, _USER_SLOTS(user)))
    recent = user.recent
    if all(type(r) is tuple and len(r) == 4 for r in recent):
        state["recent"] = tuple(list(col) for col in zip(*recent)) if recent else ([], [], [], [])
    return state


def _set_user_state(user: UserState, state: Any) -> None:
    if type(state) is not dict or not state.keys() <= _USER_SLOT_NAMES:
        raise ValueError("not the fields of a UserState")
    recent = state.get("recent")
    if type(recent) is tuple:
        if len(recent) != 4 or not all(type(c) is list and len(c) == len(recent[0]) for c in recent):
            raise ValueError("a malformed recent history")
        state["recent"] = list(zip(*recent))
    for name, value in state.items():
        object.__setattr__(user, name, value)


_USER_SLOTS = attrgetter(*UserState.__slots__)
_USER_SLOT_NAMES = frozenset(UserState.__slots__)
_ITEM_SLOT_NAMES = frozenset(ItemState.__slots__)


def _set_item_state(item: ItemState, state: Any) -> None:
    """An item's slots; `last_ts`, absent from checkpoints written before eviction, from its popularity clocks."""
    if type(state) is not dict or not state.keys() <= _ITEM_SLOT_NAMES:
        raise ValueError("not the fields of an ItemState")
    for name, value in state.items():
        object.__setattr__(item, name, value)
    if "last_ts" not in state:
        item.last_ts = max(state.get("popular_ts", 0.0), state.get("trending_ts", 0.0))


# Checkpoints (`streams/learning/shard.py`) write these in Wharf's state format, which rebuilds only the classes listed here.
STATE_TYPES = StateTypes(StateType(UserState, _user_state, _set_user_state), StateType(ItemState, None, _set_item_state), GlobalState)
