"""`GET /recommendations/{user_id}?k=10`: a user's top-K with the signal behind each item.

The request is routed by the `commerce-recommender` table to the worker that owns the
user's clicks partition (`app.table_route`): only that worker has the user's state and
the shard it belongs to (agents/recommender.py). Any worker can be asked; a non-owner
proxies the request. During a rebalance the owner may not be known yet: 503, retry.

A worker that holds the user's shard answers at once, without Faust's routing lookup (a
tenth of a request's time): holding the shard is what owning the partition means here,
since revoked shards are dropped before the new assignment (agents/recommender.py).
"""

from __future__ import annotations

import resource
from typing import Any

from faust.web import Request, Response, View

from schemas import codec
from streams.runtime import slices
from streams.runtime.app import app, settings
from streams.web.registry import Recommending, lent

MAX_K = 200


_metadata_ready = False


def _recommender() -> Recommending:
    if lent.recommendations is None:
        raise LookupError("the recommender agent is not loaded in this worker")
    return lent.recommendations


class _RoutedTable:
    """The table `table_route` routes by, looked up per request: the recommender agent lends it (`streams.web.registry`)."""

    @property
    def name(self) -> str:
        return _recommender().table.name


async def _routing_metadata() -> None:
    """Faust routes by hashing the key with the producer's partitioner, which needs the changelog topic's
    metadata; a worker that has not yet written to the changelog lacks it (TypeError inside Faust)."""
    global _metadata_ready
    if not _metadata_ready:
        await app.producer._ensure_producer().partitions_for(_recommender().table.changelog_topic.get_topic_name())  # noqa: SLF001
        _metadata_ready = True


@app.page("/recommendations/{user_id}")
class Recommendations(View):
    async def get(self, request: Request, user_id: str) -> Response:
        slices.note_request()
        if lent.recommendations is None:
            return self.json({"error": "no recommender on this worker"}, status=404)
        if lent.recommendations.has_shard_of(user_id):
            return await self.answer(request, user_id)
        await _routing_metadata()
        return await self.routed(request, user_id=user_id)

    @app.table_route(table=_RoutedTable(), match_info="user_id")
    async def routed(self, request: Request, user_id: str) -> Response:
        return await self.answer(request, user_id)

    async def answer(self, request: Request, user_id: str) -> Response:
        try:
            k = int(request.query.get("k", settings.commerce_k))
        except ValueError:
            return self.json({"error": "k must be an integer"}, status=400)
        if not 1 <= k <= MAX_K:
            return self.json({"error": f"k must be between 1 and {MAX_K}"}, status=400)
        found = await _recommender().recommend(user_id, k)
        if found is None:
            return self.json({"error": "this worker does not own the user's partition (rebalancing?); retry"}, status=503)
        partition, items = found
        body = codec.dumps({"user_id": user_id, "k": k, "partition": partition,
                            "items": [{"item_id": i, "score": s, "reason": r} for i, s, r in items]})
        return self.bytes(body, content_type="application/json")


@app.page("/commerce/stats")
class CommerceStats(View):
    """What this worker's commerce agents hold and did: shards, checkpoints, sentiment counters."""

    async def get(self, request: Request) -> Response:
        out: dict[str, Any] = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
        for part in lent.commerce_stats.values():
            out |= await part()
        return self.json(out)


@app.page("/commerce/sentiment/{kind}/{key}")
class HourlySentiment(View):
    """This hour's review count and mean score of an item or a seller (the worker owning its partition)."""

    async def get(self, request: Request, kind: str, key: str) -> Response:
        hourly = lent.hourly_sentiment.get(kind)
        if hourly is None:
            return self.json({"error": "kind must be item or seller"}, status=404)
        return self.json({kind: key, **hourly(key)})


@app.page("/sensors/devices")
class Devices(View):
    """The devices this worker owns: learned readings, active alarms (for operators and the state-moves test)."""

    async def get(self, request: Request) -> Response:
        if lent.devices is None:
            return self.json({"error": "no sensor agent on this worker"}, status=404)
        return self.json(lent.devices())
