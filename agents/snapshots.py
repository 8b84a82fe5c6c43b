"""Recommendation and also-viewed snapshots, taken from the learners and stored exactly once.

Snapshots: every `commerce_snapshot_seconds` each shard's recently active users get a
top-K `Recommendation` on the recommendations topic and its recently clicked items an
"also viewed" list on the also-viewed topic; storage agents move them to ClickHouse
exactly once (one table <- one topic).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from schemas import codec, rows
from schemas.events import Recommendation
from schemas.validation import InvalidEvent, processing_error
from streams.runtime.app import app, commerce_topics, settings, topics
from streams.runtime.slices import Slice
from agents.recommender import recommenders
from agents.storage import store_topic

log = logging.getLogger(__name__)

SNAPSHOT_MAX_USERS = 2_000  # per shard and snapshot: the most recently active
ALSO_VIEWED_K = 10
SNAPSHOT_BATCH = 5000  # rows of snapshots stored per writer batch


def also_viewed_rows(data: dict) -> list[dict[str, Any]]:
    return [{"ts": data["ts"], "item_id": data["item_id"], "shard": data["shard"], "rank": r, "other_item_id": j, "score": s}
            for r, (j, s) in enumerate(data["items"], start=1)]


async def take_snapshots(k: int | None = None) -> tuple[int, int]:
    """Top-K of recently active users and 'also viewed' of recently clicked items (from the learners), onto their topics."""
    k = k or settings.commerce_k
    now = time.time()
    asked = [learner.work("snapshot", k, ALSO_VIEWED_K, SNAPSHOT_MAX_USERS)
             for learner in recommenders.learners.by_learner(recommenders.shards)]
    futs = []
    n_users = n_items = 0
    work = Slice()
    for reply in asked:
        for p, recs, lists in await reply:
            for uid, items in recs:
                rec = Recommendation(ts=now, user_id=uid, k=k, items=[{"item_id": i, "score": s, "reason": r} for i, s, r in items])
                futs.append(await topics["topic_recommendations"].send(key=uid.encode(), value=codec.dumps(rec)))
                n_users += 1
                await work.tick()  # let requests and the agents run
            for iid, lst in lists:
                value = codec.dumps({"ts": now, "item_id": iid, "shard": p, "items": lst})
                futs.append(await commerce_topics.also_viewed.send(key=iid.encode(), value=value))
                n_items += 1
                await work.tick()
    await asyncio.gather(*futs)
    return n_users, n_items


@app.timer(settings.commerce_snapshot_seconds)
async def _snapshot_timer() -> None:
    if recommenders.shards:
        try:
            await take_snapshots()
        except Exception:  # noqa: BLE001 - the next interval takes a new one; the state is unaffected
            log.exception("recommendation snapshot failed")


def _as_is(out: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return out


def _refusal(table: str, what: str) -> Callable[[BaseException], InvalidEvent]:
    """A record on a snapshot topic that is not a snapshot is dead-lettered."""
    return lambda exc: processing_error(table, f"the {table} table ({what} expected)", exc)


@app.agent(topics["topic_recommendations"], name="wharf.store-recommendations")
async def store_recommendations(stream):  # noqa: ANN001
    await store_topic(stream, "recommendations", settings.topic_recommendations,
                      lambda event: rows.recommendation(Recommendation.model_validate_json(event.value)), _as_is,
                      _refusal("recommendations", "a Recommendation"), batch=SNAPSHOT_BATCH)


@app.agent(commerce_topics.also_viewed, name="wharf.store-item-also-viewed")
async def store_also_viewed(stream):  # noqa: ANN001
    await store_topic(stream, "item_also_viewed", settings.topic_item_also_viewed,
                      lambda event: also_viewed_rows(codec.loads(event.value)), _as_is,
                      _refusal("item_also_viewed", "an also-viewed snapshot"), batch=SNAPSHOT_BATCH)
