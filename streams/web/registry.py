"""What the web views show of the agents' state, lent by the agents that own it.

The views sit below the agents (`streams/` never imports `agents/`): each agent puts here what its views read when
it is imported, which `wharf worker` does before it registers the views and starts the web server. A view whose
agent is not loaded answers 404.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol


class Recommending(Protocol):
    """The recommender agent's shards, as `GET /recommendations/{user_id}` asks them."""

    @property
    def table(self) -> Any:
        """The Faust table a user's request is routed by: the owner of the user's key holds the user's shard."""

    def has_shard_of(self, user_id: str) -> bool:
        """Whether this worker holds the user's shard now."""

    async def recommend(self, user_id: str, k: int) -> tuple[int, list[tuple[str, float, str]]] | None:
        """(partition, [(item_id, score, reason)]); None when this worker does not own the user's partition."""


@dataclass
class Lent:
    """The agents' state the views read; filled in by the agents at import."""

    recommendations: Recommending | None = None
    commerce_stats: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = field(default_factory=dict)  # parts of /commerce/stats
    hourly_sentiment: dict[str, Callable[[str], dict[str, float]]] = field(default_factory=dict)  # kind -> key -> this hour
    devices: Callable[[], dict[str, Any]] | None = None  # /sensors/devices
    metric_families: list[Callable[[], Iterable[Any]]] = field(default_factory=list)  # /metrics: prometheus_client families


lent = Lent()
