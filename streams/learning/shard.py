"""One clicks partition's recommender and its checkpoint log: what a learner process holds (`streams/learning/learner.py`).

No Faust here: shards live in a learner process, which gets the worker's records already decoded
(`ShardRecord`) and hands back its checkpoints as table writes (`TableWrites`) for the worker to apply
under an event of the shard's partition.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, NamedTuple

from online_models.recommender import GlobalState, ItemState, OnlineRecommender, RecommenderConfig, UserState
from online_models.recommender.state import STATE_TYPES
from schemas.state import StateCodec
from streams.runtime.recent import RecentKeys
from streams.state.deltalog import DeltaLog, finish

STATE_VERSION = 3  # 3: Wharf's state format (schemas.state); 2: pickled delta log; 1: pickled, one key per user/item
LOG_PREFIX = "r"  # recommender shard logs in the table: r/{partition}/{generation}/{seq}/{chunk|c}
CODEC = StateCodec(STATE_TYPES)  # users, items, the global state: nothing else is rebuilt from a checkpoint


class Click(NamedTuple):
    """A valid click, as the model learns it (`ClickEvent`'s fields)."""

    user_id: str
    item_id: str
    action: str
    ts: float
    session_id: str | None
    category: str | None
    price: float | None


class Catalogue(NamedTuple):
    """A catalogue change: `remove` or `add` an item."""

    action: str
    item_id: str
    category: str | None
    price: float | None


class ShardRecord(NamedTuple):
    """One input record of a shard: its topic and offset (the checkpoint marker) and what it says;
    None for an invalid record, which only moves the marker (it is dead-lettered elsewhere)."""

    topic: str
    offset: int
    event: Click | Catalogue | None


class Tracked(dict):
    """A dict that remembers which keys were assigned since the last checkpoint (the model writes back every change),
    and which were deleted (evicted).

    In the order they were first assigned: a restore appends the new keys of each delta in that order, so a
    restored shard numbers its items as the live one did (the dense index's rows), and sums over them come
    out the same to the last bit. A deleted key leaves `dirty`: if it comes back it is appended again, after
    the delta's deletions (which restore applies first), as it was appended to this dict."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.dirty: dict[str, None] = {}
        self.deleted: dict[str, None] = {}

    def __setitem__(self, key: str, value: Any) -> None:
        dict.__setitem__(self, key, value)
        self.dirty[key] = None

    def __delitem__(self, key: str) -> None:
        dict.__delitem__(self, key)
        self.dirty.pop(key, None)
        self.deleted[key] = None

    def pop(self, key: str, *default: Any) -> Any:
        if key not in self:
            return dict.pop(self, key, *default)
        value = dict.__getitem__(self, key)
        del self[key]
        return value


class TableWrites(dict):
    """A table stand-in that records a checkpoint's writes in order (a value of None deletes the key),
    for the worker to replay into the real table."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[bytes, bytes | None]] = []

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.ops.append((key, value))

    def pop(self, key: bytes, default: Any = None) -> Any:
        self.ops.append((key, None))
        return default


@dataclass
class Shard:
    """The recommender of one clicks partition and what its checkpoints need."""

    partition: int
    model: OnlineRecommender
    offsets: dict[str, int] = field(default_factory=dict)  # topic -> last offset applied to the state
    active_users: RecentKeys[str] = None  # type: ignore[assignment] - since the last snapshot, oldest first (`__post_init__`)
    active_items: RecentKeys[str] = None  # type: ignore[assignment]
    clicks: int = 0
    skipped: int = 0
    log: DeltaLog = None  # type: ignore[assignment] - set in __post_init__

    def __post_init__(self) -> None:
        if self.log is None:
            self.log = DeltaLog(LOG_PREFIX, self.partition, codec=CODEC)
        config = self.model.config  # no more than the model keeps
        if self.active_users is None:
            self.active_users, self.active_items = RecentKeys(config.max_users), RecentKeys(config.max_items)

    @classmethod
    def new(cls, partition: int, config: RecommenderConfig, users: dict | None = None, items: dict | None = None,
            g: GlobalState | None = None, offsets: dict[str, int] | None = None, log: DeltaLog | None = None) -> Shard:
        model = OnlineRecommender(config, users=Tracked(users or {}), items=Tracked(items or {}), state=g)
        for store in (model.users, model.items):
            store.dirty.clear()
            store.deleted.clear()
        return cls(partition, model, dict(offsets or {}), log=log)

    @classmethod
    def restore(cls, partition: int, config: RecommenderConfig, entries: list[tuple[bytes, bytes]]) -> Shard:
        """The shard as its last committed checkpoint left it (a new one if none); see `streams.state.deltalog`.

        What it refused (not in the state format, or not a shard's checkpoint) is in `log.refused`: the caller
        logs it. A shard whose checkpoint is refused starts empty, as with no checkpoint."""
        log, found = DeltaLog.restore(LOG_PREFIX, partition, entries, codec=CODEC)  # all of its own keys are stale already
        legacy = [key for key, _ in entries if key[:2] in (b"u/", b"i/", b"g/")]
        if legacy:  # v1 (pickles): never loaded, deleted after the next image
            log.stale.update(legacy)
            log.refused.append(f"{len(legacy)} record(s) of state version 1 (pickled), e.g. {legacy[0]!r}: not loaded")
        if found is not None:
            problem = _not_a_checkpoint(found.meta, found.parts)
            if problem is None:
                version, g, offsets = found.meta
                return cls.new(partition, config, found.parts.get("users"), found.parts.get("items"), g, offsets, log=log)
            log.refused.append(f"generation {found.generation} of {LOG_PREFIX}/{partition}: {problem}; the shard starts empty")
        return cls.new(partition, config, log=log)

    def apply(self, record: ShardRecord) -> bool:
        """Learn one record; False if it is already in the state (redelivered after a restart) or invalid."""
        topic, offset, event = record
        if offset <= self.offsets.get(topic, -1):
            self.skipped += 1
            return False
        self.offsets[topic] = offset
        m = self.model
        if type(event) is Click:
            m.learn_one(event._asdict())
            self.clicks += 1
            self.active_users.touch(event.user_id)
            self.active_items.touch(event.item_id)
            return True
        if event is None:
            return False
        if event.action == "remove":
            m.remove_item(event.item_id)
        else:
            m.add_item(event.item_id, event.category, event.price)
        return True

    def checkpoint(self, table: Any) -> int:
        """Write the changed users/items (or, when due, all of them) and the marker as one delta of the shard's
        log; returns the table records written."""
        return finish(self.checkpoint_steps(table))

    def checkpoint_steps(self, table: Any) -> Iterator[int]:
        """`checkpoint` piece by piece (`DeltaLog.steps`): the state must not learn until it ends."""
        m = self.model
        image = self.log.needs_image()
        users = dict(m.users) if image else {uid: m.users[uid] for uid in m.users.dirty}
        out = m.checkpoint_item  # rows by item id: a live row names the model's index rows
        items = {iid: out(st) for iid, st in m.items.items()} if image else {iid: out(m.items[iid]) for iid in m.items.dirty}
        deleted = {} if image else {name: list(store.deleted) for name, store in (("users", m.users), ("items", m.items))
                                    if store.deleted}
        for store in (m.users, m.items):
            store.dirty.clear()
            store.deleted.clear()
        m.state.rng_state = m._rng.getstate()  # noqa: SLF001 - what the model's own __getstate__ saves
        meta = (STATE_VERSION, m.state, dict(self.offsets))
        return self.log.steps(table, {"users": users, "items": items}, meta, image, deleted)

    def stats(self) -> dict[str, Any]:
        m = self.model
        return {"users": len(m.users), "items": len(m.items), "cooc": m.rows.entries(),
                "evicted_users": m.evicted_users,
                "evicted_items": m.evicted_items, "clicks": self.clicks, "skipped": self.skipped,
                "learned": m.state.events, "offsets": dict(self.offsets)}


def also_viewed(model: OnlineRecommender, item_id: str, k: int) -> list[tuple[str, float]]:
    """Top-k P(j | i) of an item's co-occurrence row (the recommender's own normalisation)."""
    if item_id not in model.items:
        return []
    row = model.cooc_row(item_id)
    if not row:
        return []
    denom = model.cooc_normaliser(item_id)
    return [(j, v / denom) for j, v in heapq.nlargest(k, row.items(), key=itemgetter(1))]


def _not_a_checkpoint(meta: Any, parts: dict[str, dict[Any, Any]]) -> str | None:
    """Why a decoded log is not this version's shard checkpoint (None if it is): its shape, not every value."""
    if type(meta) is not tuple or len(meta) != 3:
        return "its metadata is not (version, global state, offsets)"
    version, g, offsets = meta
    if version != STATE_VERSION:
        return f"state version {version!r}, expected {STATE_VERSION}"
    if type(g) is not GlobalState or type(offsets) is not dict or \
            not all(type(t) is str and type(o) is int for t, o in offsets.items()):
        return "its metadata is not (version, global state, offsets)"
    if parts.keys() - {"users", "items"}:
        return f"unknown parts {sorted(parts.keys() - {'users', 'items'})}"
    for name, kind in (("users", UserState), ("items", ItemState)):
        if not all(type(k) is str and type(v) is kind for k, v in parts.get(name, {}).items()):
            return f"its {name} are not {kind.__name__} by id"
    return None
