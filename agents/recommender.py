"""The online recommender agent: clicks to their shard's learner, checkpoints, and the shards' restores.

Recommender state and scale-out
-------------------------------
Clicks are keyed by user_id, so partition *p* of the clicks topic holds every click of
a fixed set of users, and the worker that owns *p* owns those users. Each clicks
partition has its own `OnlineRecommender` (a *shard*): the users of *p* (`UserState`)
plus the item state (`ItemState`: co-occurrence rows, factors, popularity) and the
`GlobalState` learned from *p*'s clicks. A click touches its user, its item, the rows of
the user's last items and sampled negatives; all of those live in the shard of the
click's own partition, so every write is local, the update path needs no network hop,
and the changelog partition of each key is the clicks partition (what Faust's
`__setitem__` expects). Ranking needs every item's factors and popularity; the shard
has them in its dense arrays, so a request never waits on another worker.

Why not one item state for all users: the recommender updates user and item state
in the same step (BPR moves both vectors; a pair writes the previous item's row), so
an item-keyed repartition would split every `learn_one` into a user half and an item
half exchanged over Kafka, and ranking would still need a GlobalTable replica of all
item vectors on every worker. That is the next step if shard-local item statistics
prove too thin (each shard sees 1/P of the traffic; with 8 partitions and a shop's
volume, popularity and co-occurrence are still well estimated). It needs the split in
`online_models/recommender` and is noted in the hand-over.

Where the shards live: in the worker's learner processes (`streams/learning/learner.py`, `WHARF_COMMERCE_LEARNERS`),
so that learning runs beside the event loop that fetches, validates, stores and acks the clicks and
answers requests. The agent validates each click once, sends it to its shard's learner, and keeps it
unacked in `pending`; requests for a user's recommendations are answered by that learner.

Durability: the working state is in memory (plain dicts: a table write per change would cap the
agent near 1k clicks/s). Every `commerce_checkpoint_seconds` the agent asks the learners for each
shard's users and items changed since the last checkpoint, with the shard's `GlobalState` and the
last applied offset per input topic, as one delta of the shard's log (`streams/state/deltalog.py`: a few
chunked records per checkpoint instead of one record per changed user or item, and a full image
when the deltas outgrow it). A learner takes it in line with the records sent to it, so it holds
exactly the events pending when it was asked for. The agent writes those records to the
`commerce-recommender` table (rocksdict store, backed by its compacted changelog) under an event of
the shard's partition, and only then acks the events the checkpoint includes. Faust flushes the
changelog producer before it commits offsets, so a committed click is always in the changelog. A
restart (kill -9) or a rebalance restores the shard from its newest committed checkpoint; records
redelivered after a crash that are at or below the shard's marker are already in the state and are
skipped. A learner that dies stops the worker, with the same outcome as a kill -9.

Scale-out: start more workers on more machines with the same app id. Kafka spreads the
clicks partitions; each shard's table partition moves with it (Faust recovers it from
the changelog), and `GET /recommendations/{user_id}` is routed by the table to the
owner of the user's partition (`streams/web/serving.py`).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from online_models.recommender import RecommenderConfig
from online_models.recommender.config import DAY
from schemas.events import CatalogueChange, ClickEvent
from schemas.validation import Checked, checked
from streams.learning.learner import Learner, Learners
from streams.learning.shard import Catalogue, Click, ShardRecord
from streams.runtime import counts
from streams.runtime.app import app, commerce_topics, exit_later, limits, settings
from streams.runtime.slices import Slice
from streams.state.checkpoint import Checkpoint
from streams.web.registry import lent
from agents.partitions import P, as_event, entries_of, partition_of

log = logging.getLogger(__name__)

CLICK_BATCH = 10_000
MAX_PENDING = 100_000  # learned-but-unacked records that force a checkpoint


def recommender_config() -> RecommenderConfig:
    cfg = RecommenderConfig(max_users=settings.commerce_max_users, max_items=settings.commerce_max_items,
                            user_idle_s=settings.commerce_user_idle_days * DAY, item_idle_s=settings.commerce_item_idle_days * DAY)
    if settings.commerce_action_weights.strip():
        cfg.action_weights = {**cfg.action_weights, **json.loads(settings.commerce_action_weights)}
    return cfg.for_time_scale(settings.commerce_half_life_scale) if settings.commerce_half_life_scale != 1.0 else cfg


class Recommenders:
    """The shards this worker owns, held by its learner processes (`streams/learning/learner.py`). One per worker process."""

    def __init__(self) -> None:
        self.learners = Learners(settings.commerce_learners, recommender_config(), on_death=_learner_died)
        self.shards: dict[int, int] = {}  # partition -> serial of its restore (sent to its learner)
        self._serials = itertools.count(1)
        self.checkpoints = 0
        self.checkpoint_failed = False  # then no other is written: the worker stops (see `checkpoint`)
        self.keys_written = 0
        self.revocations = 0  # shards dropped so far: a batch that yielded checks it before loading a shard

    def load(self, partitions: set[int]) -> None:
        """Send the new partitions' table entries (recovered) to their learners: one pass over the table's keys."""
        wanted = partitions - self.shards.keys()
        if not wanted:
            return
        entries = entries_of(rec_table, wanted)
        for p in wanted:
            self.shards[p] = next(self._serials)
            self.learners.of(p).work("load", p, entries[p]).add_done_callback(functools.partial(_restored, p))

    def forget(self, partitions: set[int]) -> None:
        for p in partitions:
            self.shards.pop(p, None)
        for learner, ps in self.learners.by_learner(partitions).items():
            learner.send("forget", ps)
        self.revocations += 1

    def owned(self) -> set[int]:
        return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == settings.topic_clicks}

    @staticmethod
    def ready() -> bool:
        """Tables are restored: no rebalance under way and the changelog recovery has finished."""
        recovery = app.tables.recovery
        return not app.rebalancing and not recovery.in_recovery and recovery.completed.is_set()

    @property
    def table(self) -> Any:
        """The table a user's request is routed by: its owner holds the user's shard."""
        return rec_table

    def has_shard_of(self, user_id: str) -> bool:
        """Whether this worker holds the user's shard (restored or being restored), without loading it."""
        return partition_of(user_id) in self.shards

    def holds(self, user_id: str) -> bool:
        """Whether the user's shard is (being) restored here, loading it if this worker owns it and is ready."""
        p = partition_of(user_id)
        if p not in self.shards and self.ready():
            owned = self.owned()
            if p in owned:
                self.load(owned)
        return p in self.shards

    async def recommend(self, user_id: str, k: int) -> tuple[int, list[tuple[str, float, str]]] | None:
        """(partition, [(item_id, score, reason)]) for a user this worker owns; None: answer 503, the caller retries."""
        if not self.holds(user_id):
            return None
        p = partition_of(user_id)
        recs = await self.learners.of(p).ask("recommend", p, user_id, k)
        return None if recs is None else (p, recs)

    async def stats(self) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
        """Each shard's counters (shards still restoring are not in it yet), and each learner's: its time at work and
        answering, its longest step of work (what a request may wait behind), its collector's pauses."""
        shards: dict[int, dict[str, Any]] = {}
        learners: dict[int, dict[str, Any]] = {}
        for learner in self.learners.by_learner(self.shards):
            found = await learner.ask("stats")
            shards |= found["shards"]
            learners[learner.index] = found["process"]
        return dict(sorted(shards.items())), learners


def _learner_died(exc: BaseException) -> None:
    """What a dead learner had learned since its shards' last checkpoint is gone, and their unacked events with it:
    stop the worker, so that nothing more is acked and the restart restores the shards and reads those events again."""
    exit_later("wharf.commerce-recommender (its learner process)")
    asyncio.ensure_future(app.crash(exc))


def _restored(p: int, fut: asyncio.Future) -> None:
    if not fut.cancelled() and fut.exception() is None:
        users, items, offsets, refused = fut.result()
        for problem in refused:
            log.error("%s: record refused in recommender shard %d's checkpoint log: %s", rec_table.name, p, problem)
        if users or items:
            log.info("recommender shard %d restored: %d users, %d items, offsets %s", p, users, items, offsets)


rec_table = app.Table("commerce-recommender", key_type=bytes, value_type=bytes, partitions=P,
                      help="Recommender shards: users, items and global state (with offset markers) per clicks partition.")
rec_table.key_serializer = rec_table.value_serializer = "raw"
recommenders = Recommenders()


class Pending:
    """Events sent to the learners but not yet in the changelog: acked only after the next checkpoint
    (the durability protocol, `streams/state/checkpoint.py`)."""

    def __init__(self) -> None:
        self.ckpt = Checkpoint("recommender")
        self.last: dict[int, Any] = {}  # partition -> its latest event (the context of its table writes)

    def unacked(self) -> int:
        return self.ckpt.waiting()


pending = Pending()


def as_record(topic: str, offset: int, value: bytes | Checked, timestamp: float) -> ShardRecord:
    """A clicks or catalogue record as its shard learns it. A click may come checked already (`streams.runtime.app` decodes
    them once for this agent and the storage agent); invalid ones are dead-lettered by the storage agent
    (agents/storage.py) and catalogue changes were validated by `fan_out_catalogue`."""
    if topic == settings.topic_clicks:
        c = checked(value, ClickEvent, now=timestamp, limits=limits).event
        return ShardRecord(topic, offset, None if c is None else
                      Click(c.user_id, c.item_id, c.action, c.ts, c.session_id, c.category, c.price))
    try:
        change = CatalogueChange.model_validate_json(value)
    except ValueError:
        return ShardRecord(topic, offset, None)
    return ShardRecord(topic, offset, Catalogue(change.action, change.item_id, change.category, change.price))


async def learn_batch(events: Sequence[Any]) -> None:
    """Decode a batch and send it to the learners, in order; the events wait in `pending` for the next checkpoint.

    Yields to the loop every slice (`streams.runtime.slices`), so requests are served meanwhile; what was decoded
    is sent before each yield, so a checkpoint never lies between an event in `pending` and its record. A
    shard revoked meanwhile is not loaded again: its remaining events are left unacked for the new owner."""
    recommenders.learners.check()
    owned: set[int] | None = None
    revocations = recommenders.revocations
    work = Slice()
    out: dict[Learner, list[tuple[int, ShardRecord]]] = {}
    for event in events:
        msg = event.message
        p = msg.partition
        if p not in recommenders.shards:
            if recommenders.revocations != revocations:
                continue
            owned = owned or recommenders.owned() | {p}
            _send(out)
            recommenders.load(owned)
        out.setdefault(recommenders.learners.of(p), []).append((p, as_record(msg.topic, msg.offset, event.value, msg.timestamp)))
        pending.last[p] = event
        pending.ckpt.hold(p, event.ack, stored=True)  # the clicks' rows are the storage agent's
        if work.due():
            _send(out)
            await work.tick()
    _send(out)


def _send(out: dict[Learner, list[tuple[int, ShardRecord]]]) -> None:
    for learner, records in out.items():
        if records:
            learner.send("records", records)
    out.clear()


class Turns:
    """Who may touch `pending` when: a batch being sent, a checkpoint cutting it, the checkpoint under way."""

    def __init__(self) -> None:
        self.checkpointing = asyncio.Lock()  # taken by checkpoints, one at a time
        self.sending = asyncio.Lock()  # a batch being sent, and a checkpoint cutting `pending`
        self.checkpoint_task: asyncio.Task | None = None  # the checkpoint written in the background


turns = Turns()


async def checkpoint() -> int:
    """Ask each touched shard's learner for its checkpoint, write it under an event of the shard's partition, then
    ack the events it includes (returns how many).

    The learners take checkpoints in line with the records sent to them, so a checkpoint holds exactly the
    events in `pending` when it was asked for; the agent goes on sending new batches meanwhile. Writes are
    coalesced per interval (a popular item is written once, not once per click), which is what keeps the
    changelog from throttling the agent. A shard revoked meanwhile is abandoned (its records are not written:
    the restore of the new owner ignores the missing delta) and its events are not acked: the new owner gets
    them again."""
    async with turns.checkpointing:
        if recommenders.checkpoint_failed:  # a later delta would lack what the failed one held (the worker is stopping)
            raise RuntimeError("an earlier recommender checkpoint failed; its clicks are read again after the restart")
        try:
            async with turns.sending:
                if not pending.ckpt.held:
                    return 0
                cut, last = pending.ckpt.cut(), pending.last
                pending.last = {}
                asked = [learner.work("checkpoint", ps) for learner, ps in recommenders.learners.by_learner(last).items()]
                serials = {p: recommenders.shards.get(p) for p in last}
            return await pending.ckpt.commit(lambda _cut: _write(last, serials, asked), cut=cut)
        except BaseException:
            recommenders.checkpoint_failed = True
            raise


async def _write(last: dict[int, Any], serials: dict[int, int | None], asked: list[asyncio.Future]) -> set[int]:
    """`checkpoint`'s write: each shard's records under `last[p]`; returns the partitions written (their events are
    acked). A shard whose serial changed was revoked (and maybe restored again) meanwhile: its records are not written."""
    done: dict[int, tuple[list[tuple[bytes, bytes | None]], int] | None] = {}
    for reply in asked:
        done |= await reply
    written: set[int] = set()
    work = Slice()
    for p, found in done.items():
        if found is None or recommenders.shards.get(p) != serials[p]:  # revoked; its events go to the new owner
            continue
        ops, records = found
        with as_event(last[p]):
            for i, (key, value) in enumerate(ops):
                if value is None:
                    rec_table.pop(key, None)
                else:
                    rec_table[key] = value
                if await work.tick() and recommenders.shards.get(p) != serials[p]:
                    break
            else:
                recommenders.keys_written += records
                written.add(p)
    recommenders.checkpoints += 1
    return written


def _checkpoint_soon() -> asyncio.Task:
    """The checkpoint under way, or a new one in the background: the agent sends on while it is written."""
    task = turns.checkpoint_task
    if task is None or task.done():
        if task is not None:
            task.result()  # a failed checkpoint stops the agent, and with it the worker
        turns.checkpoint_task = task = asyncio.ensure_future(checkpoint())
    return task


@app.batch_agents.agent(commerce_topics.click_sources, name="wharf.commerce-recommender", max_records=CLICK_BATCH,
                        within=settings.commerce_batch_seconds)
async def learn_clicks(agent):  # noqa: ANN001 - streams.runtime.batches.BatchAgent
    async for events in agent.batches():
        counts.records["clicks"] += len(events)
        async with turns.sending:
            await learn_batch(events)
        if pending.unacked() >= MAX_PENDING:
            await _checkpoint_soon()  # the learners are behind: wait for them
        elif time.monotonic() - pending.ckpt.since >= settings.commerce_checkpoint_seconds:
            _checkpoint_soon()


@app.timer(0.25)
async def _checkpoint_timer() -> None:
    """Checkpoint a quiet stream too (the agent only wakes on records)."""
    if pending.ckpt.waiting() and time.monotonic() - pending.ckpt.since >= settings.commerce_checkpoint_seconds:
        await _checkpoint_soon()


async def _checkpoint_at_stop() -> None:
    """The worker stops (`streams/runtime/stopping.py`): the clicks learned since the last checkpoint are written and
    acked now, not read again by the next owner (the timer that would have written them ends with the app). A batch
    taken before the stop may still be on its way to the learners: checkpoints follow until none is."""
    while True:
        await checkpoint()
        await asyncio.sleep(0.2)
        if not pending.ckpt.waiting():
            return


app.on_stopping.append(_checkpoint_at_stop)


@app.on_partitions_revoked.connect
async def _drop_revoked_shards(app_: Any, revoked: set, **kwargs: Any) -> None:
    """A revoked shard's state is in the changelog up to its last acked batch; the new owner restores it."""
    gone = {tp.partition for tp in revoked if tp.topic == settings.topic_clicks}
    recommenders.forget(gone)
    pending.ckpt.forget(gone)
    pending.last = {p: e for p, e in pending.last.items() if p not in gone}


lent.recommendations = recommenders


async def _stats() -> dict[str, Any]:
    """`/commerce/stats`' recommender part: the shards, the learners, checkpoints and what waits for one."""
    shards, learners = await recommenders.stats()
    return {"shards": shards, "learners": learners, "checkpoints": recommenders.checkpoints,
            "keys_written": recommenders.keys_written, "unacked": pending.unacked()}


lent.commerce_stats["recommender"] = _stats
