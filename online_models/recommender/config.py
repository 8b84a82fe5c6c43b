"""Hyper-parameters of the online recommender, in one picklable dataclass.

Defaults are tuned for a shop clickstream (minutes-long sessions, tastes that
move over days). Logs with other time scales (e.g. MovieLens, years long) should
scale the half-lives; `RecommenderConfig.for_time_scale` does that in one call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

DAY = 86_400.0

# Component names double as the `reason` of a recommended item.
SESSION = "session"
CO_OCCURRENCE = "co_occurrence"
LATENT = "latent"
CATEGORY = "category"
POPULAR = "popular"
TRENDING = "trending"
COMPONENTS: tuple[str, ...] = (SESSION, CO_OCCURRENCE, LATENT, CATEGORY, POPULAR, TRENDING)


def _default_action_weights() -> dict[str, float]:
    # Implicit feedback strength: a purchase says more than a view. `remove`
    # (out of the cart) is negative. Unknown actions (e.g. "rating") count as a view.
    return {"view": 1.0, "add_to_cart": 3.0, "purchase": 5.0, "remove": -2.0}


@dataclass(slots=True)
class RecommenderConfig:
    action_weights: dict[str, float] = field(default_factory=_default_action_weights)

    # --- co-occurrence ------------------------------------------------------
    recent_items: int = 20
    """Items remembered per user (the sources of co-occurrence pairs and scores)."""
    pair_window: int = 5
    """A new interaction is paired with this many of the user's previous items."""
    cooc_top_n: int = 100
    """Co-occurrence row length kept per item (pruned from 1.5x back to this)."""
    same_session_weight: float = 1.0
    cross_session_weight: float = 0.3
    backward_weight: float = 0.5
    """Weight of the reverse pair (j -> i) relative to the forward one (i -> j)."""
    position_decay: float = 0.8
    """Pair/score weight multiplier per step back in the user's history."""
    cooc_half_life_s: float = 90 * DAY
    cooc_half_life_pairs: float = 300.0
    """Also decay a row by its own traffic: half the weight after this many new pairs (0: off)."""
    cooc_prior: float = 1.0
    """Shrinks P(j | i) of rarely seen items i: row[j] / (total + prior)."""
    session_gap_s: float = 1800.0
    """A gap longer than this starts a new session when events carry no session id."""

    # --- latent factors (online BPR) ---------------------------------------
    dim: int = 32
    learning_rate: float = 0.05
    regularization: float = 0.002
    negatives: int = 1
    init_scale: float = 0.1
    latent_temperature: float = 1.0
    latent_min_events: int = 3
    """Users with fewer interactions get no latent component (factors still random)."""

    # --- popularity ---------------------------------------------------------
    popular_half_life_s: float = 14 * DAY
    trending_half_life_s: float = 0.25 * DAY
    new_item_prior: float = 0.2
    """Pseudo-interactions every active item gets, so new catalogue items can surface."""

    # --- category -----------------------------------------------------------
    user_half_life_s: float = 7 * DAY

    # --- blending -----------------------------------------------------------
    initial_blend: dict[str, float] = field(
        default_factory=lambda: {
            SESSION: 0.3,
            CO_OCCURRENCE: 0.25,
            LATENT: 0.15,
            CATEGORY: 0.1,
            POPULAR: 0.1,
            TRENDING: 0.1,
        }
    )
    blend_every: int = 32
    """Every n-th event (deterministic) updates the blend weights before it is learned."""
    blend_rate: float = 0.02
    blend_floor: float = 0.01

    # --- bounded state (`evict.py`) ----------------------------------------
    max_users: int = 50_000
    """Users kept per model (shard): a new one past this evicts the least recently seen."""
    max_items: int = 20_000
    """Items kept per model (shard), catalogue items included."""
    user_idle_s: float = 0.0
    """A user not seen for this long (event time) is evicted (0: never by age)."""
    item_idle_s: float = 0.0
    """An item not clicked nor registered for this long (event time) is evicted (0: never by age)."""
    evict_fraction: float = 1 / 32
    """Items evicted at once when full: each eviction compacts the dense index and scans the
    co-occurrence rows, O(items), so it is done for this share of `max_items` at a time."""

    # --- recommendation -----------------------------------------------------
    exclude_purchased: bool = True
    exclude_recent: bool = False
    """Also exclude the user's remembered recent items (off: 'seen it, still want it' is useful in a shop)."""
    seed: int = 0

    def weight(self, action: str | None) -> float:
        return self.action_weights.get(action or "view", self.action_weights.get("view", 1.0))

    def for_time_scale(self, factor: float) -> RecommenderConfig:
        """A copy with every half-life, the session gap and the idle ages multiplied by `factor`."""
        return replace(
            self,
            user_idle_s=self.user_idle_s * factor,
            item_idle_s=self.item_idle_s * factor,
            cooc_half_life_s=self.cooc_half_life_s * factor,
            popular_half_life_s=self.popular_half_life_s * factor,
            trending_half_life_s=self.trending_half_life_s * factor,
            user_half_life_s=self.user_half_life_s * factor,
            session_gap_s=self.session_gap_s * factor,
        )


def rate(half_life_s: float) -> float:
    """Decay rate per second for a half-life; 0 disables decay."""
    return 0.0 if not half_life_s or math.isinf(half_life_s) else math.log(2.0) / half_life_s
