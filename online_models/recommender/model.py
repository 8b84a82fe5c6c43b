"""Online implicit-feedback recommender: a learned mixture of six signals.

`OnlineRecommender.learn_one(event)` takes one click (`ClickEvent`-shaped
mapping: user_id, item_id, action, ts, optional session_id/category/price) and
updates, in this order:

1. every `blend_every`-th event, *before* learning it, the mixture weights
   (one online-EM step on how much probability each signal gave this item);
2. co-occurrence: pairs (previous item -> this item) for the user's last
   `pair_window` items, weighted by same/cross session, position and action;
3. online BPR (latent factors) with sampled negatives;
4. the item's decayed popularity (long half-life: "popular"; short: "trending");
5. the user's decayed category preference, recent items, session and purchases.

`recommend(user_id, k)` scores every active item as a mixture
`sum_k w_k P_k(item | user)` of: `session` (co-occurrence from items of the
current session), `co_occurrence` (from older items), `latent` (softmax of the
BPR scores), `category` (preferred categories x popularity inside them),
`popular` and `trending`. Signals the user lacks (cold start) drop out and the
weights are renormalised, so a new user gets popular/trending items. The reason
of an item is the signal that contributed most to its score.

State layout (what a Faust table partitioned by user / by item would hold):

* per user (`UserState`, table by user_id): recent items with weight/ts/session,
  current session, purchased items, latent factors, category preferences.
  Written only by that user's events.
* per item (`ItemState`, table by item_id): category, price, active flag,
  bounded co-occurrence row, latent factors and bias, decayed popularity. A
  live model holds every item's row in one slab (`cooc.Rows`, by index row, so
  that a click's pairs go in with one compiled call); `checkpoint_item` writes
  an item with its row by item id, which is what a table should store.
  An event on item j by user u writes j (popularity, factors, reverse pairs),
  the rows of u's last `pair_window` items (forward pair -> j) and the factors of
  `negatives` sampled items. With Faust the forward-pair and negative updates are
  the cross-partition writes: send them as small 'pair'/'negative' messages to
  the item-keyed agent instead of writing in place.
* per worker (`GlobalState`): blend weights, RNG, popularity landmark, sample
  of recent items for negatives. The dense NumPy arrays in `caches.ItemIndex`
  are a cache of the item store, rebuilt by `rebuild_caches()`.

Stores are written back (`store[key] = state`) after every change so a table
that serialises on assignment sees the update.

Bounded state (`evict.py`): at most `max_users` users and `max_items` items, and
(optionally) none idle longer than `user_idle_s` / `item_idle_s` of event time.
A new user past the cap evicts the least recently seen one (`del store[key]`); a
new item past it evicts the `evict_fraction` least recently seen at once, since
an item eviction also compacts the dense index and drops the items from every
co-occurrence row and the negative-sampling ring (O(items) per batch).
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from online_models.recommender.bpr import bpr_step
from online_models.recommender.caches import ItemIndex
from online_models.recommender.config import (
    CATEGORY,
    CO_OCCURRENCE,
    COMPONENTS,
    LATENT,
    POPULAR,
    SESSION,
    TRENDING,
    RecommenderConfig,
    rate,
)
from online_models.recommender import cooc as _row
from online_models.recommender.evict import LastSeen
from online_models.recommender.scoring import HAS, SIGNALS, rank
from online_models.recommender.state import GlobalState, ItemState, UserState, checkpoint_copy, decayed_add, forward_add


class Ranked(NamedTuple):
    """One recommended item: its blended score and the signal that contributed most to it."""

    item_id: str
    score: float
    reason: str


@dataclass(slots=True)
class _Shared:
    """The user-independent part of a ranking (`OnlineRecommender._shared`)."""

    key: tuple
    base: np.ndarray  # blend-weighted popular + trending, -inf on inactive rows
    popular: np.ndarray  # empty: nothing active has any popularity
    trending: np.ndarray
    share: np.ndarray  # an item's share of its category's popularity
    cats: np.ndarray
    all_active: bool


_EMPTY = np.zeros(0)
_NO_ROWS = np.zeros(0, dtype=np.int32)
_RING = 2048  # recent items kept for popularity-proportional negative sampling
_MAX_PURCHASED = 500


class OnlineRecommender:
    """River-style online recommender; see the module docstring for the signals and state."""

    def __init__(
        self,
        config: RecommenderConfig | None = None,
        users: MutableMapping[str, UserState] | None = None,
        items: MutableMapping[str, ItemState] | None = None,
        state: GlobalState | None = None,
    ) -> None:
        self.config = cfg = config or RecommenderConfig()
        self.users: MutableMapping[str, UserState] = {} if users is None else users
        self.items: MutableMapping[str, ItemState] = {} if items is None else items
        self.state = state or GlobalState(blend=dict(cfg.initial_blend))
        self._rng = random.Random(cfg.seed)
        if self.state.rng_state:
            self._rng.setstate(self.state.rng_state)
        self._np_rng = np.random.default_rng(cfg.seed)
        self._draws = np.zeros((0, cfg.dim), dtype=np.float32)
        self._rate_cooc = rate(cfg.cooc_half_life_s)
        self._rate_pairs = rate(cfg.cooc_half_life_pairs)
        self._rate_pop = rate(cfg.popular_half_life_s)
        self._rate_trend = rate(cfg.trending_half_life_s)
        self._rate_user = rate(cfg.user_half_life_s)
        self._view_weight = cfg.weight("view") or 1.0
        self.index = ItemIndex(cfg.dim)
        self.rows = _row.Rows(cfg.cooc_top_n, window=cfg.pair_window)  # every item's co-occurrence row, by index row
        self._shared_cache: _Shared | None = None  # what the last request shared with every user
        self.rebuild_caches()
        self._share_strings()
        idle = [s for s in (cfg.user_idle_s, cfg.item_idle_s) if s > 0]
        self._sweep_every = min(idle) / 8 if idle else 0.0  # event time between sweeps for idle users/items
        self.evicted_users = self.evicted_items = 0  # since this object was made (not checkpointed)

    # ------------------------------------------------------------------ state

    def rebuild_caches(self) -> None:
        """Recreate the dense arrays from the item store (after a restart or a table swap). Co-occurrence rows name
        neighbours by index row: live ones are renumbered from the old index to the new, and those that came by item
        id (`ItemState.cooc_ids`: a restored checkpoint) are taken in; a neighbour not in the store is left out."""
        old = self.index
        self.index = index = ItemIndex(self.config.dim, capacity=max(1024, len(self.items)))
        self._shared_cache = None
        index.rebuild(self.items.values(), self.state.landmark, self._rate_pop, self._rate_trend)
        rows = self.rows
        rows.ensure(len(old))
        rows.renumber(np.array([index.row.get(i, -1) for i in old.ids], dtype=np.int32), len(index))
        rows.ensure(len(index))
        row = index.row
        was = old.row
        top_n = self.config.cooc_top_n
        rows.reserve(sum(_row.capacity(len(st.cooc_ids), top_n) for st in self.items.values() if st.cooc_ids is not None))
        for st in self.items.values():
            if st.cooc_ids is not None:
                others = np.array([row.get(j, -1) for j in st.cooc_ids], dtype=np.int32)
                known = others >= 0
                rows.put(row[st.item_id], others[known], st.cooc_weights[known].astype(np.float64), st.cooc_pairs,
                         st.cooc_clock, st.cooc_ref, st.cooc_total)
                st.cooc_ids = st.cooc_weights = None
            elif st.item_id not in was and st.cooc_pairs:  # a row all of whose neighbours were evicted
                rows.put(row[st.item_id], _NO_ROWS, _EMPTY, st.cooc_pairs, st.cooc_clock, st.cooc_ref, st.cooc_total)
            st.cooc_live = True
        self._seen_users = LastSeen(self.users)
        self._seen_items = LastSeen(self.items)

    def __getstate__(self) -> dict[str, Any]:
        self.state.rng_state = self._rng.getstate()
        return {**self.__dict__, "_shared_cache": None}

    def __setstate__(self, d: dict[str, Any]) -> None:
        self.__dict__.update({"_shared_cache": None, "_draws": np.zeros((0, d["config"].dim), dtype=np.float32), **d})

    def _share_strings(self) -> None:
        """Users given to the model (a restore) name items and sessions with strings of their own, one per entry:
        point them at the item store's ids and the user's session string, as `learn_one` does (about a third of
        a user's memory in the demo shop)."""
        items = self.items
        for user in self.users.values():
            session = user.session_id
            recent = user.recent
            for pos, (item_id, weight, ts, sess) in enumerate(recent):
                st = items.get(item_id)
                recent[pos] = (st.item_id if st is not None else item_id, weight, ts, session if sess == session else sess)
            if user.purchased:
                user.purchased = {(st.item_id if (st := items.get(i)) is not None else i): t for i, t in user.purchased.items()}

    def cooc_row(self, item_id: str) -> dict[str, float]:
        """An item's co-occurrence row by item id, in the row's order (forward-decayed weights, unnormalised)."""
        st = self.items.get(item_id)
        if st is None:
            return {}
        if st.cooc_ids is not None:  # not taken in yet
            return dict(zip(st.cooc_ids, st.cooc_weights.tolist(), strict=True))
        others, weights = self.rows.row(self.index.row[item_id])
        return dict(zip(self.index.names[others].tolist(), weights.tolist(), strict=True))

    def cooc_normaliser(self, item_id: str) -> float:
        """What an item's row weights are divided by to give P(j | item): its total plus the prior's pseudo-counts."""
        return self.rows.norm(self.index.row[item_id], self.config.cooc_prior)

    def checkpoint_item(self, st: ItemState) -> ItemState:
        """A copy of an item to write to a checkpoint: its row by item id (`cooc_ids`, `cooc_weights`), not by index
        row (the ids in one take from the index's `names`, the weights as one array: cheaper to write than a dict),
        and the row's clock and total as they are now."""
        r = self.index.row[st.item_id]
        others, weights = self.rows.row(r)
        pairs, clock, ref, total = self.rows.stats(r)
        if not len(others):
            return checkpoint_copy(st, None, None, pairs, clock, ref, total)
        return checkpoint_copy(st, self.index.names[others].tolist(), weights.copy(), pairs, clock, ref, total)

    # --------------------------------------------------------------- catalogue

    def add_item(self, item_id: str, category: str | None = None, price: float | None = None) -> None:
        """Register a catalogue item (it can be recommended before anyone clicks it)."""
        st = self._item(item_id, category, price, self.state.last_ts)
        st.active = True
        self.index.write(self.index.row[item_id], st)
        self.items[item_id] = st
        self._shared_cache = None

    def remove_item(self, item_id: str) -> None:
        """Take an item out of the catalogue: it is never recommended again (until `add_item`)."""
        st = self.items.get(item_id)
        if st is None:
            st = self._item(item_id, None, None, self.state.last_ts)
        st.active = False
        self.index.write(self.index.row[item_id], st)
        self.items[item_id] = st
        self._shared_cache = None

    def _item(self, item_id: str, category: str | None, price: float | None, ts: float) -> ItemState:
        st = self.items.get(item_id)
        if st is None:
            over = len(self.items) - self.config.max_items + 1
            if over > 0:
                self._evict_items(list(self._seen_items.oldest(max(over, int(self.config.max_items * self.config.evict_fraction)))))
            st = ItemState(item_id, category=category, price=price, popular_ts=ts, trending_ts=ts, last_ts=ts)
            st.factors = self._initial_factors()
            self.items[item_id] = st
            self.index.add(st)
            self.rows.ensure(len(self.index))
            st.cooc_live = True
            self._seen_items.touch(ts, item_id)
        else:
            if ts > st.last_ts:
                st.last_ts = ts
                self._seen_items.touch(ts, item_id)
            changed = False
            if category is not None and st.category != category:
                st.category, changed = category, True
            if price is not None:
                st.price = price
            if changed or item_id not in self.index.row:
                self.index.add(st)
                self.rows.ensure(len(self.index))
        return st

    def _initial_factors(self) -> np.ndarray:
        """Random factors of a new user or item, from a block drawn in advance: each shard meets every item once,
        so a worker creates nearly as many items as it learns clicks at first, and one draw per item cost ~2 us."""
        if not len(self._draws):
            cfg = self.config
            self._draws = (self._np_rng.standard_normal((256, cfg.dim)) * cfg.init_scale).astype(np.float32)
        f = self._draws[-1].copy()
        self._draws = self._draws[:-1]
        return f

    def _user(self, user_id: str, ts: float) -> UserState:
        st = self.users.get(user_id)
        if st is None:
            if len(self.users) >= self.config.max_users:
                for old in self._seen_users.oldest(len(self.users) - self.config.max_users + 1):
                    del self.users[old]
                    self.evicted_users += 1
            st = UserState(user_id, categories_ref=ts)
            st.factors = self._initial_factors()
        return st

    # ----------------------------------------------------------------- eviction

    def _evict_idle(self, now: float) -> None:
        """Evict the users and items not seen for their idle age (at most once per `_sweep_every` of event time,
        so that item evictions, O(items) each, come in batches)."""
        cfg = self.config
        if cfg.user_idle_s > 0:
            for old in self._seen_users.oldest(len(self.users), before=now - cfg.user_idle_s):
                del self.users[old]
                self.evicted_users += 1
        if cfg.item_idle_s > 0:
            self._evict_items(list(self._seen_items.oldest(len(self.items), before=now - cfg.item_idle_s)))

    def _evict_items(self, item_ids: list[str]) -> None:
        """Forget these items everywhere the model keeps item ids: the store, the dense index and its caches,
        the other items' co-occurrence rows and the negative-sampling ring. One that comes back starts fresh.
        Users' own histories may still name them: they are skipped there (no row) and age out of it."""
        if not item_ids:
            return
        for item_id in item_ids:
            del self.items[item_id]
        dead = set(item_ids)
        new_row = self.index.remove(item_ids)
        if new_row is not None:
            self._renumber_rows(new_row)
        g = self.state
        ring = [i for i in g.recent_items if i not in dead]
        if len(ring) != len(g.recent_items):
            g.recent_items, g.recent_pos = ring, 0
        self._shared_cache = None
        self.evicted_items += len(item_ids)

    def _renumber_rows(self, new_row: np.ndarray) -> None:
        """After the index dropped rows: every co-occurrence row renumbered, the dropped neighbours left out. One pass
        over the rows (compiled), once per batch of evictions; it keeps a row from naming an item that no longer
        exists, or from carrying old evidence over to an evicted item that comes back. A row that lost neighbours is
        written back (`items[id] = state`) so that a store that tracks changes checkpoints it; one only renumbered is
        not (a checkpoint names neighbours by id). The row's total keeps the removed weight, as when it is pruned."""
        changed = self.rows.renumber(new_row, len(self.index))
        items, ids = self.items, self.index.ids
        for r in np.flatnonzero(changed).tolist():
            items[ids[r]] = items[ids[r]]

    # ----------------------------------------------------------------- learning

    def learn_one(self, event: Mapping[str, Any]) -> None:
        """Learn one click. Unknown actions count as views; `remove` is a negative signal."""
        cfg = self.config
        g = self.state
        user_id = str(event["user_id"])
        item_id = str(event["item_id"])
        action = event.get("action") or "view"
        ts = event.get("ts")
        ts = float(ts) if ts is not None else g.last_ts
        weight = cfg.weight(action)
        every = self._sweep_every
        if every and ts > g.last_ts and ts // every != g.last_ts // every:
            self._evict_idle(ts)

        user = self._user(user_id, ts)
        item = self._item(item_id, event.get("category"), event.get("price"), ts)
        row = self.index.row[item_id]

        g.events += 1
        if cfg.blend_every and g.events % cfg.blend_every == 0 and user.events and weight > 0:
            self._update_blend(user, item_id, ts)

        session = event.get("session_id")
        if session is not None:
            session = str(session)
            if session != user.session_id:
                user.session_seq += 1
        else:
            if user.events == 0 or ts - user.last_ts > cfg.session_gap_s:
                user.session_seq += 1
            session = f"~{user.session_seq}"
        if session == user.session_id:
            session = user.session_id  # its own string, once per user, not one per click in `recent`
        else:
            user.session_id = session
        item_id = item.item_id  # the store's string: `recent`, `purchased` and the ring hold no copies of their own

        if weight > 0:
            self._learn_pairs(user, item_id, weight, ts, session)
            self._learn_factors(user, item, row, weight)
            self._learn_popularity(item, row, weight, ts)
            if item.category is not None:
                user.categories_ref = forward_add(
                    user.categories, user.categories_ref, item.category, weight, ts, self._rate_user
                )
            if action == "purchase":
                user.purchased[item_id] = ts
                if len(user.purchased) > _MAX_PURCHASED:
                    del user.purchased[next(iter(user.purchased))]
            recent = user.recent  # items are unique in it
            prev = 0.0
            for pos in range(len(recent) - 1, -1, -1):
                if recent[pos][0] == item_id:
                    prev = recent.pop(pos)[1]
                    break
            recent.append((item_id, max(weight, prev), ts, session))
            if len(recent) > cfg.recent_items:
                del recent[0]
            ring = g.recent_items
            if len(ring) < _RING:
                ring.append(item_id)
            else:
                ring[g.recent_pos] = item_id
                g.recent_pos = (g.recent_pos + 1) % _RING
        else:
            self._unlearn(user, item, row, weight, ts)

        item.events += 1
        if ts > user.last_ts or not user.events:
            user.last_ts = max(user.last_ts, ts)
            self._seen_users.touch(user.last_ts, user_id)
        user.events += 1
        g.last_ts = max(g.last_ts, ts)
        self.users[user_id] = user
        self.items[item_id] = item

    def _learn_pairs(self, user: UserState, item_id: str, weight: float, ts: float, session: str) -> None:
        """Pairs (previous item -> this item) and the weaker reverse pairs, all in one compiled call (`Rows.learn`)."""
        cfg = self.config
        items = self.items
        index_row = self.index.row
        same, cross, pos = cfg.same_session_weight, cfg.cross_session_weight, cfg.position_decay
        window = cfg.pair_window
        rows = self.rows
        prevs, amounts = rows.prevs, rows.amounts
        decay = weight
        k = 0
        for prev_id, _w, _ts, prev_session in reversed(user.recent):
            if prev_id == item_id:
                continue
            prev = items.get(prev_id)
            if prev is None:
                continue
            amounts[k] = decay * (same if prev_session == session else cross)
            prevs[k] = index_row[prev_id]
            items[prev_id] = prev
            decay *= pos
            k += 1
            if k >= window:
                break
        if k:
            rows.learn(index_row[item_id], k, cfg.backward_weight, self._rate_cooc * ts, self._rate_pairs)

    def _sample_negative(self, positive_row: int) -> int:
        n = len(self.index)
        ring = self.state.recent_items
        rnd = self._rng.random
        for _ in range(4):
            if ring and rnd() < 0.5:
                j = self.index.row.get(ring[int(rnd() * len(ring))], -1)
            else:
                j = int(rnd() * n)
            if j != positive_row and j >= 0:
                return j
        return -1

    def _learn_factors(self, user: UserState, item: ItemState, row: int, weight: float) -> None:
        """BPR step per sampled negative: the clicked item should score above it (`bpr.bpr_step`, compiled:
        this is the hot path). It also writes the new vectors and biases into the dense index."""
        cfg = self.config
        idx = self.index
        lr = cfg.learning_rate
        keep = 1.0 - lr * cfg.regularization
        scale = lr * min(weight / self._view_weight, 3.0)
        p = user.factors
        qi = item.factors
        items = self.items
        ids = idx.ids
        for _ in range(cfg.negatives):
            j = self._sample_negative(row)
            if j < 0:
                continue
            neg = items[ids[j]]
            item.bias, neg.bias = bpr_step(p, qi, neg.factors, item.bias, neg.bias, scale, keep, idx.q, idx.bias, row, j)
            items[neg.item_id] = neg

    def _learn_popularity(self, item: ItemState, row: int, weight: float, ts: float) -> None:
        g = self.state
        if self._rate_trend * (ts - g.landmark) > 30.0:
            # Shift the shared landmark before exp() overflows: one vectorised rescale.
            n = len(self.index)
            self.index.popular[:n] *= math.exp(-self._rate_pop * (ts - g.landmark))
            self.index.trending[:n] *= math.exp(-self._rate_trend * (ts - g.landmark))
            g.landmark = ts
        item.popular, item.popular_ts = decayed_add(item.popular, item.popular_ts, weight, ts, self._rate_pop)
        item.trending, item.trending_ts = decayed_add(item.trending, item.trending_ts, weight, ts, self._rate_trend)
        self.index.write_popularity(row, item, g.landmark, self._rate_pop, self._rate_trend)

    def _unlearn(self, user: UserState, item: ItemState, row: int, weight: float, ts: float) -> None:
        """Negative feedback (e.g. removed from cart): lower the item's latent score for
        this user, lower the category preference, forget it as a co-occurrence source."""
        cfg = self.config
        lr, reg = cfg.learning_rate, cfg.regularization
        p, q = user.factors, item.factors
        x = float(p @ q) + item.bias
        gsig = lr * min(-weight, 3.0) / (1.0 + math.exp(-x)) if x < 30 else lr * min(-weight, 3.0)
        dp = -gsig * q - lr * reg * p
        q -= gsig * p + lr * reg * q
        p += dp
        self.index.q[row] = q
        if item.category is not None:
            user.categories_ref = forward_add(user.categories, user.categories_ref, item.category, weight, ts, self._rate_user)
        user.recent = [r for r in user.recent if r[0] != item.item_id]

    # ------------------------------------------------------------ scoring

    def _live_session(self, user: UserState, now: float) -> str | None:
        """The user's session if it may still be going on at `now` (else its items are history)."""
        return user.session_id if now - user.last_ts <= self.config.session_gap_s else None

    def _cooc_sources(self, user: UserState, now: float) -> tuple[list[np.ndarray], list[np.ndarray], list[float], float, float]:
        """The user's recent items that have a co-occurrence row, newest first: each one's row as (index rows,
        weights) and its weight (action, decayed by position) over the row's normaliser (so that the products are
        P(j | item) times the source's weight), positive for an item of the live session (the `session` signal),
        negative for an older one (`co_occurrence`); and the two sums of the sources' weights."""
        cfg = self.config
        live = self._live_session(user, now)
        items = self.items
        prior = cfg.cooc_prior
        position_decay = cfg.position_decay
        cooc, index_row = self.rows, self.index.row
        rows: list[np.ndarray] = []
        probs: list[np.ndarray] = []
        signed: list[float] = []
        in_session = older = 0.0
        decay = 1.0
        for item_id, weight, _ts, session in reversed(user.recent):
            st = items.get(item_id)
            src = weight * decay
            decay *= position_decay
            if st is None or src <= 0:
                continue
            r = index_row[item_id]
            others, weights = cooc.row(r)
            if not len(others):
                continue
            rows.append(others)
            probs.append(weights)
            scaled = src / cooc.norm(r, prior)
            if session == live:
                signed.append(scaled)
                in_session += src
            else:
                signed.append(-scaled)
                older += src
        return rows, probs, signed, in_session, older

    def _category_pref(self, user: UserState) -> dict[int, float]:
        pos = {c: v for c, v in user.categories.items() if v > 0}
        total = sum(pos.values())
        if total <= 0:
            return {}
        codes = self.index.categories
        return {codes[c]: v / total for c, v in pos.items() if c in codes}

    def _popularity_vectors(self, n: int, now: float) -> tuple[np.ndarray, np.ndarray]:
        idx = self.index
        cfg = self.config
        landmark = self.state.landmark
        prior_p = cfg.new_item_prior * math.exp(self._rate_pop * (now - landmark))
        prior_t = cfg.new_item_prior * math.exp(self._rate_trend * (now - landmark))
        return idx.popular[:n] + prior_p, idx.trending[:n] + prior_t

    def _shared(self, n: int, now: float) -> _Shared:
        """What every user's ranking shares, rebuilt only after a click or a catalogue change."""
        key = (n, now, self.state.events, self.state.landmark)  # the blend also changes only with a click
        if self._shared_cache is not None and self._shared_cache.key == key:
            return self._shared_cache
        idx = self.index
        active = idx.active[:n]
        pop, trend = self._popularity_vectors(n, now)
        pop = np.where(active, pop, 0.0)
        trend = np.where(active, trend, 0.0)
        blend = self.state.blend
        base = np.zeros(n)
        popular = trending = _EMPTY
        if pop.sum() > 0:
            popular, trending = pop / pop.sum(), trend / trend.sum()
            base += blend.get(POPULAR, 0.0) * popular
            base += blend.get(TRENDING, 0.0) * trending
        all_active = bool(active.all())
        if not all_active:
            base[~active] = -np.inf
        # Category signal = preference of the item's category x the item's share of its category's popularity.
        cats = idx.category[:n]
        has = cats >= 0
        cat_pop = np.bincount(cats[has], weights=pop[has], minlength=len(idx.categories))
        of_item = np.append(cat_pop, 0.0)[cats]  # cats == -1 picks the trailing zero
        share = np.divide(pop, of_item, out=np.zeros(n), where=of_item > 0)
        self._shared_cache = _Shared(key, base, popular, trending, share, cats, all_active)
        return self._shared_cache

    def _weights(self, available: Collection[str]) -> dict[str, float]:
        blend = self.state.blend
        total = sum(blend.get(c, 0.0) for c in available)
        return {c: blend.get(c, 0.0) / total for c in available} if total > 0 else {}

    def _target_probabilities(self, user: UserState, row: int, item_id: str, now: float) -> dict[str, float]:
        """P_k(item) of every signal available to the user, without scoring the whole
        catalogue where a signal allows it (co-occurrence, popularity, category)."""
        cfg = self.config
        idx = self.index
        n = len(idx)
        active = idx.active[:n]
        if not active[row]:
            return {}
        out: dict[str, float] = {}
        # Masked sums as multiply + sum: a BLAS dot of >10k elements goes multi-threaded
        # in OpenBLAS and is ~100x slower on a busy 2-core box.
        mask = active.astype(np.float64)
        n_active = float(mask.sum())
        landmark = self.state.landmark
        prior_p = cfg.new_item_prior * math.exp(self._rate_pop * (now - landmark))
        prior_t = cfg.new_item_prior * math.exp(self._rate_trend * (now - landmark))
        pop_row = float(idx.popular[row]) + prior_p
        pop_sum = float((idx.popular[:n] * mask).sum()) + prior_p * n_active
        if pop_sum > 0:
            out[POPULAR] = pop_row / pop_sum
            out[TRENDING] = (float(idx.trending[row]) + prior_t) / (float((idx.trending[:n] * mask).sum()) + prior_t * n_active)
        live = self._live_session(user, now)
        mass = [0.0, 0.0]
        norms = [0.0, 0.0]
        decay = 1.0
        for src_id, weight, _ts, session in reversed(user.recent):
            st = self.items.get(src_id)
            src = weight * decay
            decay *= cfg.position_decay
            if st is None or src <= 0:
                continue
            r = idx.row[src_id]
            if not self.rows.length(r):
                continue
            which = 0 if session == live else 1
            norms[which] += src
            v = self.rows.weight(r, row)
            if v:
                mass[which] += src * v / self.rows.norm(r, cfg.cooc_prior)
        for which, name in ((0, SESSION), (1, CO_OCCURRENCE)):
            if norms[which] > 0:
                out[name] = mass[which] / norms[which]
        if user.events >= cfg.latent_min_events:
            w = self._latent_weights(user, n, n_active == n)
            out[LATENT] = float(w[row]) / float(w.sum())
        pref = self._category_pref(user)
        code = idx.category[row]
        if pref and code >= 0:
            in_cat = idx.category[:n] == code
            in_cat &= active
            cat_sum = float(idx.popular[:n][in_cat].sum()) + prior_p * float(in_cat.sum())
            out[CATEGORY] = pref.get(int(code), 0.0) * pop_row / cat_sum if cat_sum > 0 else 0.0
        return out

    def _latent_weights(self, user: UserState, n: int, all_active: bool) -> np.ndarray:
        """exp(score - max score) of each item for the user (float64; 0 on inactive items): the numerators of the
        latent signal's softmax, shared by ranking and by the blend's update."""
        idx = self.index
        s = (idx.q[:n] @ user.factors + idx.bias[:n]).astype(np.float64)
        s *= 1.0 / self.config.latent_temperature
        if not all_active:
            s[~idx.active[:n]] = -np.inf
        s -= s.max()
        np.exp(s, out=s)
        return s

    def _update_blend(self, user: UserState, item_id: str, now: float) -> None:
        """One online-EM step: move the weights toward each signal's share of the
        probability the mixture gave the item the user actually chose."""
        row = self.index.row.get(item_id)
        if row is None or not self.index.active[row]:
            return
        probs = self._target_probabilities(user, row, item_id, now)
        w = self._weights(probs.keys())
        if not w:
            return
        contrib = {c: w[c] * p for c, p in probs.items()}
        total = sum(contrib.values())
        if total <= 0:
            return
        cfg = self.config
        blend = self.state.blend
        mass = sum(blend.get(c, 0.0) for c in w)
        eta = cfg.blend_rate
        for c in w:
            blend[c] = mass * ((1 - eta) * w[c] + eta * contrib[c] / total)
        for c in COMPONENTS:
            blend[c] = max(blend.get(c, 0.0), cfg.blend_floor)
        s = sum(blend.values())
        for c in blend:
            blend[c] /= s

    def recommend(
        self,
        user_id: str,
        k: int = 10,
        exclude: Collection[str] | None = None,
        ts: float | None = None,
    ) -> list[Ranked]:
        """Top-`k` items for a user, best first, each with the signal that put it there.

        The score is the blend over the user's available signals, renormalised: summed with the raw blend
        weights (the shared popularity part is cached between clicks) by the compiled `scoring.rank`, and
        divided at the end. Co-occurrence from the live session is the `session` signal, from older items
        `co_occurrence`: each a mixture of the source items' rows P(j | i), weighted by the sources."""
        idx = self.index
        n = len(idx)
        if n == 0 or k <= 0:
            return []
        cfg = self.config
        user = self.users.get(str(user_id))
        now = ts if ts is not None else self.state.last_ts
        shared = self._shared(n, now)
        blend = self.state.blend
        available = 0
        total = 0.0
        if len(shared.popular):
            available |= HAS[POPULAR] | HAS[TRENDING]
            total += blend.get(POPULAR, 0.0) + blend.get(TRENDING, 0.0)
        rows: list[np.ndarray] = []
        probs: list[np.ndarray] = []
        signed: list[float] = []
        scales = [0.0, 0.0]
        latent = cat_weights = _EMPTY
        drop: list[int] = []
        if exclude:
            drop += idx.rows_of(exclude)
        if user is not None:
            rows, probs, signed, in_session, older = self._cooc_sources(user, now)
            for which, (name, mass) in enumerate(((SESSION, in_session), (CO_OCCURRENCE, older))):
                if mass > 0:
                    available |= HAS[name]
                    total += blend.get(name, 0.0)
                    scales[which] = blend.get(name, 0.0) / mass
            if user.events >= cfg.latent_min_events:
                available |= HAS[LATENT]
                total += blend.get(LATENT, 0.0)
                latent = self._latent_weights(user, n, shared.all_active)
            pref = self._category_pref(user)
            if pref:
                available |= HAS[CATEGORY]
                b = blend.get(CATEGORY, 0.0)
                total += b
                cat_weights = np.zeros(len(idx.categories) + 1)
                for c, v in pref.items():
                    cat_weights[c] = b * v
            if cfg.exclude_purchased and user.purchased:
                drop += idx.rows_of(user.purchased)
            if cfg.exclude_recent:
                drop += idx.rows_of(r[0] for r in user.recent)
        if total <= 0:
            return []
        top, scores, reasons = rank(
            k, available, blend.get(POPULAR, 0.0), blend.get(TRENDING, 0.0), shared.base, shared.popular, shared.trending,
            np.concatenate(rows) if rows else _NO_ROWS, np.concatenate(probs) if probs else _EMPTY,
            np.array([len(r) for r in rows], dtype=np.int64), np.array(signed, dtype=np.float64), scales[0], scales[1],
            latent, blend.get(LATENT, 0.0), shared.cats, shared.share, cat_weights, np.array(drop, dtype=np.int64),
        )
        scale = 1.0 / total
        ids = idx.ids
        return [Ranked(ids[r], s * scale, SIGNALS[why]) for r, s, why in zip(top.tolist(), scores.tolist(), reasons.tolist(), strict=True)]
