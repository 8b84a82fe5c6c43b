"""Per-user, per-item and per-worker state of the online recommender.

Every value here is a small dataclass of plain data, so a Faust table keyed by user
(`UserState`) and one keyed by item (`ItemState`) can replace the plain dicts the
model uses by default. `GlobalState` is per worker (blend weights, RNG, a sample
of recent items); it is tiny and can live in a single-key table. One exception:
a live item's co-occurrence row is held by its model (`cooc.Rows`, one slab for
all rows, naming neighbours by their row in the model's dense index), so items go
to checkpoints through `OnlineRecommender.checkpoint_item`, which writes the row
into the item by item id, with its clock and total.

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

import math
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

import numpy as np

from online_models.recommender import cooc as _row
from schemas.state import StateType, StateTypes

_MAX_EXPONENT = _row.MAX_EXPONENT


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
    cooc_ids: list[str] | None = None
    """Co-occurrence row 'item -> other item', bounded to the top-N, by item id, with `cooc_weights` (float64,
    forward-decayed): only in checkpoints (`OnlineRecommender.checkpoint_item`) and in a restored item until its
    model takes it in (`OnlineRecommender.rebuild_caches`); None in a live model, whose rows are in `cooc.Rows`.
    The row's `cooc_total`, `cooc_pairs`, `cooc_clock` and `cooc_ref` are likewise as of the last checkpoint or
    restore in a live item: the model holds them with the row."""
    cooc_weights: np.ndarray | None = None
    cooc_total: float = 0.0
    """Sum of all pair weights ever added (same scale as the row), including pruned ones."""
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
    cooc_live: bool = False
    """Held by a model, whose `cooc.Rows` has its row: write it through `OnlineRecommender.checkpoint_item`."""


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


_ROW_SLOTS = ("cooc_live",)  # never in a checkpoint
_ITEM_CHECKPOINT_SLOTS = tuple(n for n in ItemState.__slots__ if n not in _ROW_SLOTS)
_ITEM_CHECKPOINT_GET = attrgetter(*_ITEM_CHECKPOINT_SLOTS)


def _slot_copier() -> Any:
    """`ItemState` -> a new one with the checkpoint slots' values, as straight-line code generated from the slots
    (as `dataclasses` generates `__init__`): a loop of `setattr` over them took twice as long, and a delta
    checkpoint copies every item a batch of clicks touched."""
    body = "".join(f"    out.{n} = item.{n}\n" for n in _ITEM_CHECKPOINT_SLOTS)
    scope: dict[str, Any] = {"new": ItemState.__new__, "ItemState": ItemState}
    exec(f"def copy(item):\n    out = new(ItemState)\n{body}    return out\n", scope)  # noqa: S102 - our own slot names
    return scope["copy"]


_COPY = _slot_copier()


def checkpoint_copy(item: ItemState, ids: list[str] | None, weights: np.ndarray | None, pairs: int, clock: float,
                    ref: float, total: float) -> ItemState:
    """A copy of `item` with its model's row (`ids` and `weights`, None if empty) and that row's clock and total, not
    held by a model: what a checkpoint writes."""
    out = _COPY(item)
    out.cooc_ids, out.cooc_weights, out.cooc_live = ids, weights, False
    out.cooc_pairs, out.cooc_clock, out.cooc_ref, out.cooc_total = pairs, clock, ref, total
    return out


def _item_state(item: ItemState) -> dict[str, Any]:
    """An item's slots with its row by item id: a model holds a live item's row, so an item held by a model must be
    written through `OnlineRecommender.checkpoint_item`."""
    if item.cooc_live:
        raise ValueError(f"item {item.item_id!r} has a live co-occurrence row: write OnlineRecommender.checkpoint_item")
    return dict(zip(_ITEM_CHECKPOINT_SLOTS, _ITEM_CHECKPOINT_GET(item)))


def _set_item_state(item: ItemState, state: Any) -> None:
    """An item's slots; `last_ts`, absent from checkpoints written before eviction, from its popularity clocks.
    The row comes by item id, for the model to take in (`OnlineRecommender.rebuild_caches`): as `cooc_ids` and
    `cooc_weights`, or, written before rows were arrays, as a dict `cooc` (item id -> weight)."""
    if type(state) is not dict:
        raise ValueError("not the fields of an ItemState")
    old = state.pop("cooc", None)
    if not state.keys() <= _ITEM_SLOT_NAMES or state.keys() & _ROW_SLOTS:
        raise ValueError("not the fields of an ItemState")
    for name, value in state.items():
        object.__setattr__(item, name, value)
    item.cooc_live = False
    if "last_ts" not in state:
        item.last_ts = max(state.get("popular_ts", 0.0), state.get("trending_ts", 0.0))
    if old is not None:
        if type(old) is not dict or state.get("cooc_ids") is not None:
            raise ValueError("a malformed co-occurrence row")
        item.cooc_ids, item.cooc_weights = list(old), np.array(list(old.values()), dtype=np.float64)
    ids, weights = item.cooc_ids, item.cooc_weights
    if ids is None and weights is None:
        return
    if type(ids) is not list or type(weights) is not np.ndarray or weights.dtype != np.float64 or \
            weights.shape != (len(ids),) or not all(type(i) is str for i in ids):
        raise ValueError("a malformed co-occurrence row: cooc_ids must be item ids and cooc_weights as many float64")


# Checkpoints (`streams/learning/shard.py`) write these in Wharf's state format, which rebuilds only the classes listed here.
STATE_TYPES = StateTypes(StateType(UserState, _user_state, _set_user_state), StateType(ItemState, _item_state, _set_item_state), GlobalState)
