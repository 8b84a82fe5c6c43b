"""Shop clickstream simulator: users with tastes browsing a changing catalogue.

Deterministic for a given `ShopConfig` (all randomness comes from one seeded
NumPy generator; timestamps start at a fixed `start_ts`, never the wall clock).

The world:

* categories with a Zipf-like base popularity and a price level; each has a
  *related* category (phones -> phone cases) that sessions hop to;
* items: a category, a log-normal price, a latent vector near the category's
  centre, an appeal, and a few *complements* in the related category;
* users: a Dirichlet taste over categories (a few favourites), a latent vector,
  a price sensitivity and an activity level (who comes back often);
* trends: every `trend_period_s` a couple of categories become hot; new items
  get a freshness boost that fades over `fresh_half_life_s`;
* arrivals: new items and new users keep arriving at configured daily rates.

A session picks a category by taste x trend, views items chosen by
appeal + user.item affinity + trend (often hopping to a complement of the item
just seen), adds some to the cart, removes some, and buys part of the cart at
the end. Sessions overlap in time; `events()` yields them merged in time order.
"""

from __future__ import annotations

import heapq
from collections import Counter
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wharf.simulator import reviews

CATEGORY_NAMES = (
    "phones", "phone_cases", "laptops", "laptop_bags", "headphones", "speakers", "cameras", "memory_cards",
    "shoes", "socks", "jackets", "hats", "books", "bookmarks", "toys", "batteries", "kitchen", "cookbooks",
    "garden", "tools", "sports", "bottles", "beauty", "mirrors", "games", "consoles", "coffee", "mugs",
)  # fmt: skip


@dataclass(slots=True)
class ShopConfig:
    seed: int = 0
    n_users: int = 2000
    n_items: int = 3000
    n_categories: int = 20
    events_per_second: float = 5.0
    """Mean click rate in simulated time (sessions arrive as a Poisson process)."""
    start_ts: float = 1_704_067_200.0  # 2024-01-01T00:00:00Z
    new_items_per_day: float = 100.0
    new_users_per_day: float = 300.0
    trend_period_s: float = 6 * 3600.0
    hot_categories: int = 2
    hot_boost: float = 3.0
    fresh_half_life_s: float = 2 * 86_400.0
    fresh_boost: float = 1.5
    latent_dim: int = 8
    taste_concentration: float = 0.2
    mean_session_views: float = 6.0
    view_gap_s: float = 40.0
    p_complement: float = 0.35
    p_switch_category: float = 0.1
    p_follow_trend: float = 0.2
    """Share of category choices that follow the crowd (base popularity x trend) instead of the user's taste."""
    p_cart: float = 0.12
    p_remove: float = 0.2
    p_purchase: float = 0.6
    complements: int = 3
    p_review: float = 0.35
    """Share of purchases followed by a review (rating and text from `wharf.simulator.reviews`)."""
    review_delay_s: float = 600.0
    n_sellers: int = 20
    defect_every_s: float = 3 * 3600.0
    """Every this often (simulated) one popular item gets a defective batch for `defect_duration_s` (0: never)."""
    defect_duration_s: float = 3600.0


@dataclass(slots=True)
class _Item:
    item_id: str
    category: int
    price: float
    vec: np.ndarray
    appeal: float
    born: float
    complements: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _User:
    user_id: str
    taste: np.ndarray
    vec: np.ndarray
    price_sensitivity: float
    activity: float


class ShopSimulator:
    """`ShopSimulator(ShopConfig(seed=1)).events(10_000)` -> ClickEvent-shaped dicts in time order."""

    def __init__(self, config: ShopConfig | None = None) -> None:
        self.config = cfg = config or ShopConfig()
        self.rng = np.random.default_rng(cfg.seed)
        n_cat = min(cfg.n_categories, len(CATEGORY_NAMES))
        self.categories = list(CATEGORY_NAMES[:n_cat])
        rng = self.rng
        self.cat_base = 1.0 / np.arange(1, n_cat + 1) ** 0.7
        self.cat_price = np.exp(rng.uniform(1.5, 6.0, n_cat))
        self.cat_center = rng.standard_normal((n_cat, cfg.latent_dim))
        # Pairs (0,1), (2,3), ... are each other's related category.
        self.cat_related = np.array([c ^ 1 if (c ^ 1) < n_cat else c for c in range(n_cat)])
        self.items: list[_Item] = []
        self.items_by_cat: list[list[int]] = [[] for _ in range(n_cat)]
        self.users: list[_User] = []
        self.hot = np.ones(n_cat)
        self._trend_epoch = -1
        self.trend_history: list[tuple[int, list[str]]] = []
        """(trend period number, hot category names), one entry per period started."""
        self._cat_cache: dict[int, tuple[int, np.ndarray, np.ndarray, np.ndarray]] = {}
        self._seq = 0
        self._review_seq = 0
        self.purchases: Counter[str] = Counter()
        self.defects: dict[int, tuple[str, float, float]] = {}
        """Defective batches so far: epoch -> (item_id, start_ts, end_ts)."""
        self._session_seq = 0
        self._event_seq = 0
        for _ in range(cfg.n_items):
            self._new_item(cfg.start_ts - 30 * 86_400.0 * rng.random())
        for _ in range(cfg.n_users):
            self._new_user()
        self._activity = np.array([u.activity for u in self.users])

    # ---------------------------------------------------------------- world

    def _new_item(self, born: float) -> int:
        cfg, rng = self.config, self.rng
        n_cat = len(self.categories)
        c = int(rng.choice(n_cat, p=self.cat_base / self.cat_base.sum()))
        idx = len(self.items)
        item = _Item(
            item_id=f"i{idx}",
            category=c,
            price=round(float(self.cat_price[c] * math.exp(0.5 * rng.standard_normal())), 2),
            vec=self.cat_center[c] + 0.7 * rng.standard_normal(cfg.latent_dim),
            appeal=float(rng.standard_normal()),
            born=born,
        )
        related = self.items_by_cat[int(self.cat_related[c])]
        if related:
            item.complements = [related[int(j)] for j in rng.integers(0, len(related), cfg.complements)]
        self.items.append(item)
        self.items_by_cat[c].append(idx)
        return idx

    def _new_user(self) -> int:
        cfg, rng = self.config, self.rng
        n_cat = len(self.categories)
        idx = len(self.users)
        taste = rng.dirichlet(np.full(n_cat, cfg.taste_concentration)) * self.cat_base
        self.users.append(
            _User(
                user_id=f"u{idx}",
                taste=taste / taste.sum(),
                vec=rng.standard_normal(cfg.latent_dim) * 0.8,
                price_sensitivity=float(rng.uniform(0.0, 1.0)),
                activity=float(rng.lognormal(0.0, 1.0)),
            )
        )
        return idx

    def _update_trends(self, ts: float) -> None:
        cfg = self.config
        epoch = int((ts - cfg.start_ts) // cfg.trend_period_s)
        if epoch != self._trend_epoch:
            self._trend_epoch = epoch
            self.hot = np.ones(len(self.categories))
            hot = self.rng.choice(len(self.categories), size=min(cfg.hot_categories, len(self.categories)), replace=False)
            self.hot[hot] = cfg.hot_boost
            self.trend_history.append((epoch, [self.categories[int(c)] for c in hot]))

    def _category_arrays(self, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stacked vectors/appeal/birth of a category's items, rebuilt when it gains items."""
        cached = self._cat_cache.get(c)
        cand = self.items_by_cat[c]
        if cached is None or cached[0] != len(cand):
            items = [self.items[i] for i in cand]
            cached = (
                len(cand),
                np.stack([it.vec for it in items]),
                np.array([it.appeal for it in items]),
                np.array([it.born for it in items]),
            )
            self._cat_cache[c] = cached
        return cached[1], cached[2], cached[3]

    def _pick_item(self, user: _User, c: int, ts: float) -> int:
        cfg = self.config
        cand = self.items_by_cat[c]
        if not cand:
            return -1
        vecs, appeal, born = self._category_arrays(c)
        age = np.maximum(ts - born, 0.0)
        fresh = cfg.fresh_boost * np.exp(-age * (math.log(2) / cfg.fresh_half_life_s))
        logit = appeal + vecs @ user.vec * (1.0 / math.sqrt(cfg.latent_dim)) + fresh
        p = np.exp(logit - logit.max())
        cdf = np.cumsum(p)
        return cand[min(int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right")), len(cand) - 1)]

    def _pick_category(self, user: _User) -> int:
        # Mostly the user's own taste (tilted by trends); sometimes whatever is hot right now.
        cfg = self.config
        own = user.taste * self.hot
        crowd = self.cat_base * self.hot**2
        p = (1 - cfg.p_follow_trend) * own / own.sum() + cfg.p_follow_trend * crowd / crowd.sum()
        return int(self.rng.choice(len(p), p=p))

    # -------------------------------------------------------------- sessions

    def _session(self, user: _User, start: float) -> list[dict[str, Any]]:
        cfg, rng = self.config, self.rng
        self._session_seq += 1
        session_id = f"s{self._session_seq}"
        n_views = 1 + int(rng.geometric(1.0 / cfg.mean_session_views))
        ts = start
        c = self._pick_category(user)
        current = self._pick_item(user, c, ts)
        cart: list[int] = []
        out: list[tuple[float, str, int]] = []
        for _ in range(n_views):
            if current < 0:
                break
            out.append((ts, "view", current))
            item = self.items[current]
            affinity = item.appeal + float(item.vec @ user.vec) / math.sqrt(cfg.latent_dim)
            price_pen = user.price_sensitivity * math.log1p(item.price) / 6.0
            if rng.random() < cfg.p_cart * 2.0 / (1.0 + math.exp(-(affinity - price_pen))):
                ts += rng.exponential(cfg.view_gap_s / 2)
                out.append((ts, "add_to_cart", current))
                cart.append(current)
            if cart and rng.random() < cfg.p_remove / 3:
                gone = cart.pop(int(rng.integers(len(cart))))
                ts += rng.exponential(cfg.view_gap_s / 2)
                out.append((ts, "remove", gone))
            ts += rng.exponential(cfg.view_gap_s)
            u = rng.random()
            if u < cfg.p_complement and item.complements:
                current = item.complements[int(rng.integers(len(item.complements)))]
            elif u < cfg.p_complement + cfg.p_switch_category:
                current = self._pick_item(user, self._pick_category(user), ts)
            else:
                current = self._pick_item(user, item.category, ts)
        for i in cart:
            if rng.random() < cfg.p_purchase:
                ts += rng.exponential(cfg.view_gap_s)
                out.append((ts, "purchase", i))
        events = []
        for t, action, i in out:
            self._event_seq += 1
            item = self.items[i]
            events.append(
                {
                    "event_id": f"e{self._event_seq}",
                    "user_id": user.user_id,
                    "session_id": session_id,
                    "item_id": item.item_id,
                    "action": action,
                    "price": item.price,
                    "category": self.categories[item.category],
                    "ts": round(t, 3),
                }
            )
        return events

    def _after_purchase(self, event: dict[str, Any]) -> list[tuple[float, str, dict[str, Any]]]:
        """Follow-up events of a purchase as (ts, kind, payload): sometimes a review, later."""
        cfg, rng = self.config, self.rng
        if rng.random() >= cfg.p_review:
            return []
        idx = int(event["item_id"][1:])
        item, user = self.items[idx], self.users[int(event["user_id"][1:])]
        self.purchases[event["item_id"]] += 1
        fit = float(user.vec @ item.vec) / np.sqrt(cfg.latent_dim) + (item.appeal - 1.0)
        ts = event["ts"] + float(rng.exponential(cfg.review_delay_s))
        rating = reviews.rating_for(fit, self._defective(item.item_id, event["ts"]), rng)
        self._review_seq += 1
        return [(ts, "review", {
            "review_id": f"r{cfg.seed}-{self._review_seq}", "user_id": user.user_id, "item_id": item.item_id,
            "seller_id": f"seller-{idx % cfg.n_sellers:02d}", "rating": rating,
            "text": reviews.review_text(rating, self.categories[item.category], rng), "ts": round(ts, 3),
        })]

    def _defective(self, item_id: str, ts: float) -> bool:
        """A defective batch: the ground truth for the sentiment-drop alarm (`defects`)."""
        cfg = self.config
        if cfg.defect_every_s <= 0:
            return False
        epoch = int((ts - cfg.start_ts) // cfg.defect_every_s)
        if epoch < 1:
            return False
        if epoch not in self.defects:
            # the best seller so far: an item that gets enough reviews for the drop to show
            pick = self.purchases.most_common(1)[0][0] if self.purchases else item_id
            start = cfg.start_ts + epoch * cfg.defect_every_s
            self.defects[epoch] = (pick, start, start + cfg.defect_duration_s)
        pick, start, end = self.defects[epoch]
        return item_id == pick and start <= ts < end

    # ---------------------------------------------------------------- output

    def stream(self, n_events: int | None = None, until_ts: float | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """All events as `(kind, payload)` in time order; kind is "click" (later also "review")."""
        cfg, rng = self.config, self.rng
        session_rate = cfg.events_per_second / (cfg.mean_session_views * (1 + cfg.p_cart) + 1)
        pending: list[tuple[float, int, str, dict[str, Any]]] = []
        next_start = cfg.start_ts
        emitted = 0
        items_acc = users_acc = 0.0
        while n_events is None or emitted < n_events:
            # Emit everything that happens before the next session starts.
            while pending and pending[0][0] <= next_start:
                ts, _, kind, payload = heapq.heappop(pending)
                if until_ts is not None and ts > until_ts:
                    return
                yield kind, payload
                emitted += kind == "click"
                if n_events is not None and emitted >= n_events:
                    return
            gap = rng.exponential(1.0 / session_rate)
            items_acc += gap * cfg.new_items_per_day / 86_400.0
            users_acc += gap * cfg.new_users_per_day / 86_400.0
            next_start += gap
            while items_acc >= 1.0:
                items_acc -= 1.0
                self._new_item(next_start)
            new_user = False
            while users_acc >= 1.0:
                users_acc -= 1.0
                self._new_user()
                self._activity = np.append(self._activity, self.users[-1].activity)
                new_user = True
            self._update_trends(next_start)
            if new_user:
                user = self.users[-1]
            else:
                cdf = np.cumsum(self._activity)
                user = self.users[min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(self.users) - 1)]
            for ev in self._session(user, next_start):
                self._seq += 1
                heapq.heappush(pending, (ev["ts"], self._seq, "click", ev))
                if ev["action"] == "purchase":
                    for ts, kind, payload in self._after_purchase(ev):
                        self._seq += 1
                        heapq.heappush(pending, (ts, self._seq, kind, payload))

    def events(self, n_events: int | None = None, until_ts: float | None = None) -> Iterator[dict[str, Any]]:
        """Click events (ClickEvent-shaped dicts) in time order."""
        for kind, payload in self.stream(n_events, until_ts):
            if kind == "click":
                yield payload

    def catalogue(self) -> list[dict[str, Any]]:
        """Current items as {item_id, category, price} (for `OnlineRecommender.add_item`)."""
        return [{"item_id": i.item_id, "category": self.categories[i.category], "price": i.price} for i in self.items]


def simulate_clicks(n_events: int, seed: int = 0, **overrides: Any) -> list[dict[str, Any]]:
    """`n_events` clicks from a fresh `ShopSimulator(ShopConfig(seed=seed, **overrides))`."""
    return list(ShopSimulator(ShopConfig(seed=seed, **overrides)).events(n_events))
