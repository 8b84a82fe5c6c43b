"""Commerce path agents: the online recommender, catalogue changes, snapshots, review sentiment.

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

Where the shards live: in the worker's learner processes (`streams/learner.py`, `WHARF_COMMERCE_LEARNERS`),
so that learning runs beside the event loop that fetches, validates, stores and acks the clicks and
answers requests. The agent validates each click once, sends it to its shard's learner, and keeps it
unacked in `pending`; requests for a user's recommendations are answered by that learner.

Durability: the working state is in memory (plain dicts: a table write per change would cap the
agent near 1k clicks/s). Every `commerce_checkpoint_seconds` the agent asks the learners for each
shard's users and items changed since the last checkpoint, with the shard's `GlobalState` and the
last applied offset per input topic, as one delta of the shard's log (`streams/deltalog.py`: a few
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
owner of the user's partition (`streams/serving.py`).

Catalogue: `wharf.shop.catalogue` (keyed by item_id; `POST /catalogue` writes it) says
that an item was removed or added back. `fan_out_catalogue` copies each change to every
partition of an internal topic co-partitioned with the clicks, so every shard applies
it in order with its clicks (`remove_item`: never recommended again).

Snapshots: every `commerce_snapshot_seconds` each shard's recently active users get a
top-K `Recommendation` on the recommendations topic and its recently clicked items an
"also viewed" list on the also-viewed topic; storage agents move them to ClickHouse
exactly once (one table <- one topic).

Sentiment
---------
Reviews (keyed by item_id) are validated (invalid ones dead-lettered), scored in
batches (one MiniLM forward pass per batch, in a thread), learned in order from their
rating (>= 4 positive, <= 2 negative), stored in `reviews` exactly once and produced to
the sentiment topic. Per item (the reviews' key) and per seller (repartitioned through
an internal topic keyed by seller_id) Faust keeps hourly tumbling windows of count and
score sum. An item whose last-hour mean falls `commerce_sentiment_drop` below its
long-run norm raises an `item` alarm through `online_models.alarms.AlarmBook` (the
sensor path's lifecycle) onto the alerts topic.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from aiokafka.partitioner import murmur2
from faust.streams import _current_event
from pydantic import Field

from online_models.alarms import STATE_TYPES as ALARM_STATE_TYPES
from online_models.alarms import AlarmBook
from online_models.recommender import RecommenderConfig
from online_models.recommender.config import DAY
from online_models.sentiment.model import LEARNED_STATE_TYPES
from schemas import codec, rows
from schemas.events import ClickEvent, Ident, Recommendation, Review, SentimentScore, Severity, TimedEvent, to_epoch
from schemas.state import StateCodec, StateFormatError, StateTypes
from schemas.validation import Checked, checked, processing_error
from streams import counts
from streams.acks import OrderedAcker
from streams.app import app, exit_later, limits, settings, storage, topics
from streams.deltalog import DeltaLog
from streams.ingest import dead_letter_event, produce_dead_letter, valid_or_dead_letter
from streams.learner import Learner, Learners
from streams.shard import Catalogue, Click, Record
from streams.slices import Slice
from streams.topics import CATALOGUE_FANOUT, SELLER_SENTIMENT, internal_topic_name

log = logging.getLogger(__name__)

P = settings.topic_partitions
STATE_VERSION = 3  # 3: state format (schemas.state); 2: pickled delta log (streams.deltalog); 1: one key per user/item
CLICK_BATCH = 10_000
MAX_PENDING = 100_000  # learned-but-unacked records that force a checkpoint
SNAPSHOT_MAX_USERS = 2_000  # per shard and snapshot: the most recently active
ALSO_VIEWED_K = 10
REVIEW_BATCH = 64
ITEM_ALARM_CLEAR_SECONDS = 1800.0
SENTIMENT_NORM_ALPHA = 0.02  # weight of one review in an item's long-run norm (EWMA)


def _raw(*names: str, **kw: Any):  # noqa: ANN202 - faust.Topic
    return app.topic(*names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
                     partitions=P, internal=True, **kw)


# Settings-named topics (created here as well as by `wharf infra up` once listed in streams/topics.py).
catalogue_topic = _raw(settings.topic_catalogue)
also_viewed_topic = _raw(settings.topic_item_also_viewed)
# Internal topics, named after the app id like Faust's own.
catalogue_fanout_topic = _raw(internal_topic_name(settings, CATALOGUE_FANOUT))
seller_topic = _raw(internal_topic_name(settings, SELLER_SENTIMENT))
# The recommender reads both: same key space and partition count, so partition p of each belongs to shard p.
# `wharf worker` creates these topics before Faust subscribes (streams.topics.worker_topic_names); internal=True
# lets Faust create them too, with P partitions, for an app started another way.
click_sources = _raw(settings.topic_clicks, catalogue_fanout_topic.get_topic_name())


@functools.lru_cache(maxsize=1 << 17)
def partition_of(key: str, partitions: int = P) -> int:
    """The partition Kafka's default partitioner (murmur2) gives a key: the shard of a user (murmur2 is
    pure Python, ~10 us, and a request needs it twice: remembered for the users asked most recently)."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


@contextmanager
def as_event(event: Any) -> Iterator[None]:
    """Make `event` Faust's current event, so table writes go to its partition's store and changelog.

    Batches (`noack_take`) mix partitions; the state of partition p is written under an event of p."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


# --- catalogue changes ------------------------------------------------------------------------------


class CatalogueChange(TimedEvent):
    """An item leaves (`remove`) or re-enters (`add`) the catalogue."""

    item_id: Ident
    action: Literal["remove", "add"]
    category: Ident | None = None
    price: float | None = Field(None, ge=0, le=1e7)


# --- recommender --------------------------------------------------------------------------------------


def recommender_config() -> RecommenderConfig:
    cfg = RecommenderConfig(max_users=settings.commerce_max_users, max_items=settings.commerce_max_items,
                            user_idle_s=settings.commerce_user_idle_days * DAY, item_idle_s=settings.commerce_item_idle_days * DAY)
    if settings.commerce_action_weights.strip():
        cfg.action_weights = {**cfg.action_weights, **json.loads(settings.commerce_action_weights)}
    return cfg.for_time_scale(settings.commerce_half_life_scale) if settings.commerce_half_life_scale != 1.0 else cfg


def _partition_of_key(key: bytes) -> int:
    """Partition of a table key: `r/{p}/...` and `s/{p}/...` (streams.deltalog logs) or the v1 per-entry keys `u|i|g/{p}/...`."""
    return int(key.split(b"/", 2)[1])


def _entries_of(table: Any, partitions: set[int]) -> dict[int, list[tuple[bytes, bytes]]]:
    """A log table's entries by partition, for these partitions only: one pass over the table's keys."""
    entries: dict[int, list[tuple[bytes, bytes]]] = {p: [] for p in partitions}
    for key, blob in table.items():
        try:
            p = _partition_of_key(key)
        except (IndexError, ValueError):
            log.error("%s: key %r is not one of a checkpoint log; ignored", table.name, key)
            continue
        if p in partitions:
            entries[p].append((key, blob))
    return entries


class Recommenders:
    """The shards this worker owns, held by its learner processes (`streams/learner.py`). One per worker process."""

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
        entries = _entries_of(rec_table, wanted)
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
    """Events sent to the learners but not yet in the changelog: acked only after the next checkpoint."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.last: dict[int, Any] = {}  # partition -> its latest event (the context of its table writes)
        self.since = time.monotonic()
        self.checkpointing = 0  # events of the checkpoint under way (learned, not acked yet)

    def unacked(self) -> int:
        return len(self.events) + self.checkpointing


pending = Pending()


def as_record(topic: str, offset: int, value: bytes | Checked, timestamp: float) -> Record:
    """A clicks or catalogue record as its shard learns it. A click may come checked already (`streams.app` decodes
    them once for this agent and the storage agent); invalid ones are dead-lettered by the storage agent
    (agents/storage.py) and catalogue changes were validated by `fan_out_catalogue`."""
    if topic == settings.topic_clicks:
        c = checked(value, ClickEvent, now=timestamp, limits=limits).event
        return Record(topic, offset, None if c is None else
                      Click(c.user_id, c.item_id, c.action, c.ts, c.session_id, c.category, c.price))
    try:
        change = CatalogueChange.model_validate_json(value)
    except ValueError:
        return Record(topic, offset, None)
    return Record(topic, offset, Catalogue(change.action, change.item_id, change.category, change.price))


async def learn_batch(events: Sequence[Any]) -> None:
    """Decode a batch and send it to the learners, in order; the events wait in `pending` for the next checkpoint.

    Yields to the loop every slice (`streams.slices`), so requests are served meanwhile; what was decoded
    is sent before each yield, so a checkpoint never lies between an event in `pending` and its record. A
    shard revoked meanwhile is not loaded again: its remaining events are left unacked for the new owner."""
    recommenders.learners.check()
    owned: set[int] | None = None
    revocations = recommenders.revocations
    work = Slice()
    out: dict[Learner, list[tuple[int, Record]]] = {}
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
        pending.events.append(event)
        if work.due():
            _send(out)
            await work.tick()
    _send(out)


def _send(out: dict[Learner, list[tuple[int, Record]]]) -> None:
    for learner, records in out.items():
        if records:
            learner.send("records", records)
    out.clear()


_checkpointing = asyncio.Lock()  # taken by checkpoints, one at a time
_sending = asyncio.Lock()  # a batch being sent, and a checkpoint cutting `pending`


async def checkpoint() -> int:
    """Ask each touched shard's learner for its checkpoint, write it under an event of the shard's partition, then
    ack the events it includes (returns how many).

    The learners take checkpoints in line with the records sent to them, so a checkpoint holds exactly the
    events in `pending` when it was asked for; the agent goes on sending new batches meanwhile. Writes are
    coalesced per interval (a popular item is written once, not once per click), which is what keeps the
    changelog from throttling the agent. A shard revoked meanwhile is abandoned (its records are not written:
    the restore of the new owner ignores the missing delta) and its events are not acked: the new owner gets
    them again."""
    async with _checkpointing:
        if recommenders.checkpoint_failed:  # a later delta would lack what the failed one held (the worker is stopping)
            raise RuntimeError("an earlier recommender checkpoint failed; its clicks are read again after the restart")
        try:
            async with _sending:
                if not pending.events:
                    return 0
                events, last = pending.events, pending.last
                pending.events, pending.last, pending.since = [], {}, time.monotonic()
                pending.checkpointing = len(events)  # until acked (`/commerce/stats` unacked)
                asked = [learner.work("checkpoint", ps) for learner, ps in recommenders.learners.by_learner(last).items()]
                serials = {p: recommenders.shards.get(p) for p in last}
            return await _write_then_ack(events, last, serials, asked)
        except BaseException:
            recommenders.checkpoint_failed = True
            raise
        finally:
            pending.checkpointing = 0


async def _write_then_ack(events: list[Any], last: dict[int, Any], serials: dict[int, int | None],
                          asked: list[asyncio.Future]) -> int:
    """`checkpoint`'s work: each shard's records written under `last[p]`, then the events of the shards written acked.
    A shard whose serial changed was revoked (and maybe restored again) meanwhile: its records are not written."""
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
    acked = [e for e in events if e.message.partition in written]
    for i, event in enumerate(acked):  # in consumption order, so per partition in offset order
        event.ack()
        if i % 1024 == 1023:  # an ack is ~1.5 us: look at the clock now and then
            await work.tick()
    return len(acked)


_checkpoint_task: asyncio.Task | None = None


def _checkpoint_soon() -> asyncio.Task:
    """The checkpoint under way, or a new one in the background: the agent sends on while it is written."""
    global _checkpoint_task
    if _checkpoint_task is None or _checkpoint_task.done():
        if _checkpoint_task is not None:
            _checkpoint_task.result()  # a failed checkpoint stops the agent, and with it the worker
        _checkpoint_task = asyncio.ensure_future(checkpoint())
    return _checkpoint_task


@app.batch_agents.agent(click_sources, name="wharf.commerce-recommender", max_records=CLICK_BATCH,
                        within=settings.commerce_batch_seconds)
async def learn_clicks(agent):  # noqa: ANN001 - streams.batches.BatchAgent
    async for events in agent.batches():
        counts.records["clicks"] += len(events)
        async with _sending:
            await learn_batch(events)
        if pending.unacked() >= MAX_PENDING:
            await _checkpoint_soon()  # the learners are behind: wait for them
        elif time.monotonic() - pending.since >= settings.commerce_checkpoint_seconds:
            _checkpoint_soon()


@app.timer(0.25)
async def _checkpoint_timer() -> None:
    """Checkpoint a quiet stream too (the agent only wakes on records)."""
    if pending.events and time.monotonic() - pending.since >= settings.commerce_checkpoint_seconds:
        await _checkpoint_soon()


async def _checkpoint_at_stop() -> None:
    """The worker stops (`streams/stopping.py`): the clicks learned since the last checkpoint are written and acked
    now, not read again by the next owner (the timer that would have written them ends with the app). A batch
    taken before the stop may still be on its way to the learners: checkpoints follow until none is."""
    while True:
        await checkpoint()
        await asyncio.sleep(0.2)
        if not pending.events:
            return


app.on_stopping.append(_checkpoint_at_stop)


@app.on_partitions_revoked.connect
async def _drop_revoked_shards(app_: Any, revoked: set, **kwargs: Any) -> None:
    """A revoked shard's state is in the changelog up to its last acked batch; the new owner restores it."""
    sentiment.forget({tp.partition for tp in revoked if tp.topic == settings.topic_reviews})
    gone = {tp.partition for tp in revoked if tp.topic == settings.topic_clicks}
    recommenders.forget(gone)
    pending.events = [e for e in pending.events if e.message.partition not in gone]
    pending.last = {p: e for p, e in pending.last.items() if p not in gone}


@app.batch_agents.agent(catalogue_topic, name="wharf.commerce-catalogue", max_records=1000, within=0.05)
async def fan_out_catalogue(agent):  # noqa: ANN001 - streams.batches.BatchAgent
    """Copy every valid catalogue change to each partition of the co-partitioned fan-out topic, then ack.

    A batch agent: changes are rare, and a Faust agent's `noack_take` wakes every `within` (50 ms) with nothing
    to take, about 0.3 ms of the worker's loop each time; a batch agent starts its timer at the first record."""
    acker = OrderedAcker()
    async for events in agent.batches():
        for event in events:
            done = acker.track(event)
            change = await valid_or_dead_letter(event, CatalogueChange, dlq_topic=topics["topic_dead_letters"], limits=limits)
            if change is None:
                done()
                continue
            value = codec.dumps(change)
            futs = [await catalogue_fanout_topic.send(key=change.item_id.encode(), value=value, partition=p) for p in range(P)]
            await asyncio.gather(*futs)
            done()


# --- snapshots -----------------------------------------------------------------------------------------


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
                futs.append(await also_viewed_topic.send(key=iid.encode(), value=value))
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


async def store_snapshots(stream, table: str, source_topic: str, to_rows, what: str) -> None:  # noqa: ANN001
    """Snapshot topic -> its table through the writer; a record that is not a snapshot is dead-lettered."""
    writer = storage.writer(table, source_topic)
    acker = OrderedAcker()
    async for events in stream.noack_take(5000, within=settings.sink_batch_seconds):
        for event in events:
            done = acker.track(event)
            msg = event.message
            try:
                out = to_rows(event.value)
            except Exception as exc:  # noqa: BLE001 - anyone with access to Kafka can write here
                await dead_letter_event(topics["topic_dead_letters"], event, processing_error(table, f"the {table} table ({what} expected)", exc),
                                        limits=limits)
                done()
                continue
            await writer.put(msg.partition, msg.offset, out, done)


@app.agent(topics["topic_recommendations"], name="wharf.store-recommendations")
async def store_recommendations(stream):  # noqa: ANN001
    await store_snapshots(stream, "recommendations", settings.topic_recommendations,
                          lambda value: rows.recommendation(Recommendation.model_validate_json(value)), "a Recommendation")


@app.agent(also_viewed_topic, name="wharf.store-item-also-viewed")
async def store_also_viewed(stream):  # noqa: ANN001
    await store_snapshots(stream, "item_also_viewed", settings.topic_item_also_viewed,
                          lambda value: also_viewed_rows(codec.loads(value)), "an also-viewed snapshot")


# --- sentiment -----------------------------------------------------------------------------------------


SENTIMENT_LOG_PREFIX = "s"  # review model checkpoints in their table: s/{partition}/{generation}/{seq}/{chunk|c}
SENTIMENT_STATE_VERSION = 2  # 2: state format (schemas.state); 1: pickled
SENTIMENT_CODEC = StateCodec(LEARNED_STATE_TYPES)
SENTIMENT_PIECE_ENTRIES = 5_000  # n-gram counts are small entries: 5,000 to a table record, not 50

sentiment_table = app.Table("commerce-sentiment-model", key_type=bytes, value_type=bytes, partitions=P,
                            help="The review model's learned state (head, n-gram counts) with the review offsets it "
                                 "includes: a delta log (streams.deltalog) under one reviews partition of its worker.")
sentiment_table.key_serializer = sentiment_table.value_serializer = "raw"


class Sentiment:
    """The review model of this worker, built on first use (MiniLM takes seconds to load), and its checkpoints.

    One model per worker learns from the reviews of every partition it owns. After each batch, before the batch's
    reviews are handed to the writer (so before any is acked), what it learned goes to the log of one owned
    partition (the lowest with an event). A restarted or rebalanced worker adopts the most learned checkpoint it
    finds under its partitions, if it knows more than its own model, and skips learning the reviews that checkpoint
    includes (`through`): a review is learned once, also when Kafka delivers it again."""

    def __init__(self, encoder: str) -> None:
        self.encoder = encoder
        self._model: Any = None
        self.scored = 0
        self.learned = 0
        self.alerts = 0
        self.through: dict[int, int] = {}  # reviews partition -> the last offset the model learned
        self.logs: dict[int, DeltaLog] = {}  # owned partitions' checkpoint logs, as found in the table
        self.last: dict[int, Any] = {}  # owned partition -> its latest event (the context of a write there)
        self.written_to: int | None = None  # the log of the last checkpoint: deltas go there, elsewhere an image
        self.since: list[str] = []  # texts learned since the last checkpoint (the n-gram counts they changed)
        self.checkpoints = 0
        self.restored = 0  # reviews the adopted checkpoints included

    @property
    def model_learned(self) -> int:
        """Reviews the model has learned, restored ones included (without building the model)."""
        return self._model.n_learned if self._model is not None else 0

    def restore(self, partitions: set[int]) -> None:
        """Read the checkpoint logs of newly owned partitions; adopt the most learned one if it knows more."""
        wanted = partitions - self.logs.keys()
        if not wanted:
            return
        entries = _entries_of(sentiment_table, wanted)
        best: tuple[int, int, dict, Any] | None = None
        for p in sorted(wanted):
            self.logs[p], found = DeltaLog.restore(SENTIMENT_LOG_PREFIX, p, entries[p], piece_entries=SENTIMENT_PIECE_ENTRIES,
                                                   codec=SENTIMENT_CODEC)
            for problem in self.logs[p].refused:
                log.error("%s: record refused in the review model's checkpoint log %d: %s", sentiment_table.name, p, problem)
            if found is None:
                continue
            meta = found.meta
            if type(meta) is not tuple or len(meta) != 4 or type(meta[2]) is not int or type(meta[3]) is not dict \
                    or not all(type(k) is int and type(v) is int for k, v in meta[3].items()):
                log.error("%s: checkpoint under partition %d has no valid metadata; not used", sentiment_table.name, p)
                continue
            version, encoder, n_learned, through = meta
            if version != SENTIMENT_STATE_VERSION or encoder != self.encoder:
                log.warning("review model checkpoint under partition %d is of encoder %r (version %s), not %r: not used",
                            p, encoder, version, self.encoder)
                continue
            if best is None or n_learned > best[0]:
                best = (n_learned, p, through, found.parts)
        if best is not None and best[0] > self.model.n_learned:
            n_learned, p, through, parts = best
            try:
                self.model.load_learned_state(parts)
            except ValueError as exc:
                log.error("%s: checkpoint under partition %d refused (%s); the model goes on without it",
                          sentiment_table.name, p, exc)
                return
            self.through = dict(through)
            self.written_to, self.since = None, []
            self.restored += n_learned
            log.info("review model restored from partition %d: %d reviews learned, through offsets %s", p, n_learned, through)

    def forget(self, partitions: set[int]) -> None:
        for p in partitions:
            self.logs.pop(p, None)
            self.last.pop(p, None)
            if self.written_to == p:
                self.written_to = None

    def learn(self, partition: int, offset: int, review: Review) -> None:
        """Learn a review from its rating, unless the model includes it already."""
        if offset <= self.through.get(partition, -1):
            return
        self.through[partition] = offset
        if self.model.learn_rating(review.text, review.rating):
            self.learned += 1
            self.since.append(review.text)

    def checkpoint(self, owned: set[int]) -> int:
        """Write what was learned since the last checkpoint; returns the table records written. Only under a partition
        this worker owns (`owned`): another worker may write its own log there (a rebalance under way)."""
        candidates = self.last.keys() & self.logs.keys() & owned
        if not self.since or not candidates:
            return 0
        p = min(candidates)
        log_ = self.logs[p]
        image = p != self.written_to or log_.needs_image()
        parts = self.model.learned_state(None if image else self.since)
        meta = (SENTIMENT_STATE_VERSION, self.encoder, self.model.n_learned, dict(self.through))
        with as_event(self.last[p]):
            written = log_.write(sentiment_table, parts, meta, image)
        self.written_to, self.since = p, []
        self.checkpoints += 1
        return written

    @property
    def model(self) -> Any:
        if self._model is None:
            import torch

            from online_models.sentiment import SentimentModel

            torch.set_num_threads(1)  # one core per worker; the other belongs to Kafka and ClickHouse
            self._model = SentimentModel(encoder=self.encoder)
        return self._model


sentiment = Sentiment(settings.commerce_sentiment_encoder)



def _event_ts(event: Any = None) -> float:
    """Window by the review's own time (its JSON `ts`; reviews and sentiment scores both carry it), not Kafka's.
    A review may carry an ISO-8601 `ts` (validated before this runs): read it as validation does."""
    return to_epoch(codec.loads(event.value)["ts"]) if event is not None else time.time()


item_hourly = app.Table("commerce-item-sentiment-hourly", default=lambda: [0, 0.0], partitions=P,
                        help="Per item and hour: [reviews, score sum].").tumbling(3600, expires=timedelta(days=2)).relative_to(_event_ts)
seller_hourly = app.Table("commerce-seller-sentiment-hourly", default=lambda: [0, 0.0], partitions=P,
                          help="Per seller and hour: [reviews, score sum].").tumbling(3600, expires=timedelta(days=2)).relative_to(_event_ts)
item_norms = app.Table("commerce-item-sentiment-norm", key_type=bytes, value_type=bytes, partitions=P,
                       help="Per item: long-run sentiment norm and its alarm book (state format, schemas.state).")
item_norms.key_serializer = item_norms.value_serializer = "raw"


@dataclass
class ItemNorm:
    """An item's long-run sentiment (reviews of past hours, by event time) and its alarm book."""

    hour: int = -1
    hour_n: int = 0
    hour_sum: float = 0.0
    n: int = 0
    mean: float = 0.0
    book: AlarmBook | None = None

    def fold(self, n: int, total: float) -> None:
        """Add past reviews to the norm: exact mean for the first 1/alpha, then an EWMA that follows slow drift."""
        for _ in range(n):
            self.n += 1
            w = SENTIMENT_NORM_ALPHA if self.n > 1 / SENTIMENT_NORM_ALPHA else 1.0 / self.n
            self.mean += (total / n - self.mean) * w

    def add(self, ts: float, score: float) -> None:
        hour = int(ts // 3600)
        if hour > self.hour:
            if self.hour_n:
                self.fold(self.hour_n, self.hour_sum)
            self.hour, self.hour_n, self.hour_sum = hour, 0, 0.0
        if hour < self.hour:  # a late review belongs to a past hour: it only moves the norm
            self.fold(1, score)
        else:
            self.hour_n += 1
            self.hour_sum += score


NORM_CODEC = StateCodec(StateTypes(ItemNorm) | ALARM_STATE_TYPES)
_NORM_FIELDS = {"hour": int, "hour_n": int, "hour_sum": float, "n": int, "mean": float}


def _load_norm(item_id: str, blob: bytes) -> ItemNorm:
    """An item's stored norm; a record refused (not in the state format, or not a norm) is logged and starts fresh."""
    try:
        norm = NORM_CODEC.loads(blob)
        if type(norm) is not ItemNorm or not all(type(getattr(norm, f, None)) is t for f, t in _NORM_FIELDS.items()) \
                or not (getattr(norm, "book", 0) is None or type(getattr(norm, "book", 0)) is AlarmBook):
            raise StateFormatError(f"not an ItemNorm: {type(norm).__name__}")
    except StateFormatError as exc:
        log.error("%s: state of item %r refused (%s); its norm starts fresh", item_norms.name, item_id, exc)
        return ItemNorm()
    return norm


def check_drop(norm: ItemNorm, item_id: str, ts: float) -> Any:
    """Raise or clear the item's sentiment-drop alarm (its current hour against its norm); an Alert on a change."""
    if norm.book is None:
        norm.book = AlarmBook(item_id, source_type="item", clear_after=ITEM_ALARM_CLEAR_SECONDS)
    need = settings.commerce_sentiment_min_reviews
    hour_mean = norm.hour_sum / norm.hour_n if norm.hour_n else 0.0
    drop = norm.mean - hour_mean
    if norm.hour_n >= need and norm.n >= need and drop >= settings.commerce_sentiment_drop:
        severity = Severity.CRITICAL if drop >= 1.5 * settings.commerce_sentiment_drop else Severity.MAJOR
        return norm.book.raise_("sentiment_drop", severity, ts,
                                f"last-hour sentiment {hour_mean:+.2f} over {norm.hour_n} reviews, norm {norm.mean:+.2f}",
                                {"hour_mean": round(hour_mean, 3), "hour_reviews": norm.hour_n, "norm": round(norm.mean, 3)})
    return norm.book.normal("sentiment_drop", ts)


def score_reviews(reviews: Sequence[tuple[Any, Review]]) -> list[SentimentScore | Exception]:
    """Predict each review, then learn it from its rating, strictly in order (features were batched). A review the
    model fails on gets its error in its place (the caller dead-letters it): one text must not stop the path."""
    model = sentiment.model
    out: list[SentimentScore | Exception] = []
    for event, r in reviews:
        try:
            pred = model.predict_one(r.text)
            out.append(SentimentScore(ts=r.ts, review_id=r.review_id, user_id=r.user_id, item_id=r.item_id, seller_id=r.seller_id,
                                      rating=r.rating, score=max(-1.0, min(1.0, pred.score)), label=pred.label,
                                      model=sentiment.encoder, text=r.text))
            sentiment.learn(event.message.partition, event.message.offset, r)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.exception("review at %s/%d/%d broke the review model; dead-lettered", event.message.topic,
                          event.message.partition, event.message.offset)
            out.append(exc)
    sentiment.scored += sum(isinstance(x, SentimentScore) for x in out)
    return out


def owned_review_partitions() -> set[int]:
    return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == settings.topic_reviews}


def update_item_sentiment(event: Any, s: SentimentScore) -> Any:
    """Hourly window and norm of the review's item (its key, so its partition); returns an Alert or None."""
    with as_event(event):
        n, total = item_hourly[s.item_id].value()
        item_hourly[s.item_id] = [n + 1, total + s.score]
        key = s.item_id.encode()
        blob = item_norms.get(key)
        norm = _load_norm(s.item_id, blob) if blob else ItemNorm()
        norm.add(s.ts, s.score)
        alert = check_drop(norm, s.item_id, s.ts)
        item_norms[key] = NORM_CODEC.dumps(norm)
    return alert


@app.agent(topics["topic_reviews"], name="wharf.commerce-sentiment")
async def score_review_stream(stream):  # noqa: ANN001
    writer = storage.writer("reviews", settings.topic_reviews)
    acker = OrderedAcker()
    async for events in stream.noack_take(REVIEW_BATCH, within=0.2):
        counts.records["reviews"] += len(events)
        valid: list[tuple[Any, Any, Review]] = []
        for event in events:
            done = acker.track(event)
            review = await valid_or_dead_letter(event, Review, dlq_topic=topics["topic_dead_letters"], limits=limits)
            if review is None:
                done()
            else:
                valid.append((event, done, review))
        if not valid:
            continue
        owned = owned_review_partitions()
        for event, _done, _r in valid:
            sentiment.last[event.message.partition] = event
        sentiment.restore(owned)
        texts = [r.text for _, _, r in valid]
        model = sentiment.model
        await asyncio.to_thread(model.precompute, texts)  # the MiniLM forward pass, off the event loop
        scores = score_reviews([(event, r) for event, _, r in valid])
        sentiment.checkpoint(owned)  # before any of these reviews can be acked
        futs = []
        for (event, _done, _r), s in zip(valid, scores, strict=True):
            if isinstance(s, Exception):
                m = event.message
                futs.append(await produce_dead_letter(topics["topic_dead_letters"], processing_error("review", "the review model", s, m.value),
                                                      m.value, "kafka", keep_bytes=limits.dead_letter_keep_bytes, kafka_topic=m.topic,
                                                      kafka_partition=m.partition, kafka_offset=m.offset))
                continue
            value = codec.dumps(s)
            futs.append(await topics["topic_sentiment"].send(key=s.item_id.encode(), value=value))
            if s.seller_id:
                futs.append(await seller_topic.send(key=s.seller_id.encode(), value=value))
            alert = update_item_sentiment(event, s)
            if alert is not None:
                sentiment.alerts += 1
                futs.append(await topics["topic_alerts"].send(key=alert.alarm_id.encode(), value=codec.dumps(alert)))
        await asyncio.gather(*futs)  # Kafka has the scores and alerts before the reviews are acked
        for (event, done, _r), s in zip(valid, scores, strict=True):
            if isinstance(s, Exception):
                done()  # its dead letter is confirmed above
            else:
                await writer.put(event.message.partition, event.message.offset, rows.review(s), done)


@app.agent(seller_topic, name="wharf.commerce-seller-sentiment")
async def seller_sentiment(stream):  # noqa: ANN001
    """Hourly per-seller windows; keyed by seller_id, so each write is in its own partition."""
    async for event in stream.events():
        try:
            s = SentimentScore.model_validate_json(event.value)
            if not s.seller_id:
                raise ValueError("seller_id is required on the seller topic")
        except Exception as exc:  # noqa: BLE001 - a record that is not a score must not stop the worker
            await dead_letter_event(topics["topic_dead_letters"], event, processing_error("sentiment_score", "the seller windows", exc),
                                    limits=limits)
            continue
        n, total = seller_hourly[s.seller_id].value()
        seller_hourly[s.seller_id] = [n + 1, total + s.score]


def hourly(table: Any, key: str) -> dict[str, float]:
    """Current hour's reviews and mean score of an item or seller (outside a stream: wall-clock window)."""
    n, total = table[key].now()
    return {"reviews": n, "mean": total / n if n else 0.0}
