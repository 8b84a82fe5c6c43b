"""Bounded recommender state: users and items evicted by count and by idle age, everywhere and in checkpoints."""

from __future__ import annotations

import random

from online_models.recommender import OnlineRecommender, RecommenderConfig
from online_models.recommender.state import STATE_TYPES
from schemas.state import StateCodec
from streams.state.deltalog import DeltaLog
from streams.learning.shard import Click, ShardRecord, Shard

CODEC = StateCodec(STATE_TYPES)
TOPIC = "clicks"


def churn(n: int, seed: int = 0, start: float = 1_000.0) -> list[dict]:
    """Clicks where ids never stop coming: each user clicks 4 times, items from a window that keeps moving
    (2 new item ids per 4 clicks), with categories and the odd purchase, one second apart."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        item = i // 2 + rng.randrange(12)
        out.append({"user_id": f"u{i // 4}", "item_id": f"i{item}", "ts": start + i, "session_id": f"s{i // 4}",
                    "action": "purchase" if rng.random() < 0.05 else "view", "category": f"c{item % 7}"})
    return out


def check_consistent(model: OnlineRecommender) -> None:
    """No structure names an item the store does not hold, and the index numbers the store's items in order."""
    items = model.items
    assert model.index.ids == list(items) and model.index.row == {i: r for r, i in enumerate(items)}
    for st in items.values():
        rows = model.rows.row(model.index.row[st.item_id])[0].tolist()
        assert len(set(rows)) == len(rows) and all(0 <= r < len(items) for r in rows), st.item_id
        assert model.cooc_row(st.item_id).keys() <= items.keys(), f"{st.item_id}'s row names evicted items"
        assert st.cooc_ids is None  # the rows by id are only in checkpoints
    assert set(model.state.recent_items) <= items.keys()
    n = len(items)
    codes = model.index.category[:n]
    assert set(model.index.categories.values()) == set(codes[codes >= 0].tolist())


def encoded_size(model: OnlineRecommender) -> int:
    items = {k: model.checkpoint_item(v) for k, v in model.items.items()}
    return len(CODEC.dumps({"users": dict(model.users), "items": items, "g": model.state}))


def test_ten_times_the_caps_of_new_ids_keep_the_model_at_the_caps_with_bounded_state() -> None:
    cfg = RecommenderConfig(seed=0, max_users=50, max_items=100)
    model = OnlineRecommender(cfg)
    events = churn(4_000)  # 1,000 users and ~1,750 items: over 10x the caps
    distinct_items = len({e["item_id"] for e in events})
    assert distinct_items > 1_000
    sizes = {}
    for n, ev in enumerate(events, 1):
        model.learn_one(ev)
        assert len(model.users) <= 50 and len(model.items) <= 100
        if n in (2_000, 4_000):
            sizes[n] = encoded_size(model)
            check_consistent(model)
    assert len(model.users) == 50 and len(model.items) >= 90  # full, less at most one batch
    assert model.evicted_users == 1_000 - 50 and model.evicted_items >= distinct_items - 100
    assert sizes[4_000] < 1.2 * sizes[2_000], sizes  # stopped growing
    assert model.index.q.shape[0] <= 1024  # the dense arrays did not grow with the ids either
    # the survivors are the most recently seen
    assert set(model.users) == {f"u{i}" for i in range(950, 1_000)}


def test_bounded_memory_stays_flat_while_an_unbounded_model_grows() -> None:
    events = churn(6_000, seed=1)
    capped = OnlineRecommender(RecommenderConfig(seed=0, max_users=100, max_items=200))
    unbounded = OnlineRecommender(RecommenderConfig(seed=0, max_users=10**9, max_items=10**9))
    for ev in events[:3_000]:
        capped.learn_one(ev)
        unbounded.learn_one(ev)
    half = encoded_size(capped), encoded_size(unbounded)
    for ev in events[3_000:]:
        capped.learn_one(ev)
        unbounded.learn_one(ev)
    full = encoded_size(capped), encoded_size(unbounded)
    assert full[0] < 1.2 * half[0] and full[1] > 1.7 * half[1], (half, full)


def test_idle_users_and_items_are_evicted_by_event_time() -> None:
    cfg = RecommenderConfig(seed=0, user_idle_s=100.0, item_idle_s=200.0)
    model = OnlineRecommender(cfg)
    model.add_item("catalogue-only", "c1")  # registered at the model's clock (0), never clicked
    model.learn_one({"user_id": "gone", "item_id": "old", "ts": 1_000.0})
    model.learn_one({"user_id": "gone", "item_id": "older", "ts": 1_001.0})
    for t in range(1_002, 1_400, 5):
        model.learn_one({"user_id": f"w{t % 3}", "item_id": f"x{t % 4}", "ts": float(t)})
    assert "gone" not in model.users and {"old", "older", "catalogue-only"}.isdisjoint(model.items)
    assert {"w0", "w1", "w2"} <= model.users.keys() and {"x0", "x1", "x2", "x3"} <= model.items.keys()
    check_consistent(model)
    # late (out-of-order) events do not move the clock back nor evict anyone
    model.learn_one({"user_id": "late", "item_id": "x0", "ts": 500.0})
    assert "late" in model.users
    # idle by event time, not by wall clock or event count: a long quiet stretch evicts everyone not seen since
    model.learn_one({"user_id": "w0", "item_id": "x0", "ts": 5_000.0})
    assert set(model.users) == {"w0"} and set(model.items) == {"x0"}
    check_consistent(model)


def test_an_evicted_item_is_gone_from_every_structure_and_comes_back_fresh() -> None:
    cfg = RecommenderConfig(seed=0, max_items=40, evict_fraction=0.1)
    model = OnlineRecommender(cfg)
    events = churn(600, seed=2)
    first = events[0]["item_id"]
    for ev in events:
        model.learn_one(ev)
    assert first not in model.items and model.evicted_items > 0
    check_consistent(model)
    assert all(first not in model.cooc_row(i) for i in model.items)
    # an eviction renumbers every row: each survivor's row by id is what it was, less the evicted neighbours
    before = {i: model.cooc_row(i) for i in model.items}
    dead = list(model.items)[3:9]
    model._evict_items(dead)  # noqa: SLF001 - the batch eviction under test
    assert all(model.cooc_row(i) == {k: v for k, v in before[i].items() if k not in dead} for i in model.items)
    assert sum(len(r) for r in before.values()) > sum(len(model.cooc_row(i)) for i in model.items) > 0
    check_consistent(model)
    # the survivors recommend only live, active items
    for uid in list(model.users)[-20:]:
        recs = model.recommend(uid, 10)
        assert len(recs) == 10 and len({r.item_id for r in recs}) == 10
        assert all(r.item_id in model.items and model.items[r.item_id].active for r in recs)
    # it comes back: new state, nothing of the old one
    model.learn_one({"user_id": "back", "item_id": first, "ts": 10_000.0})
    st = model.items[first]
    assert st.events == 1 and st.popular == 1.0 and not model.cooc_row(first)
    assert model.recommend("back", 5)
    check_consistent(model)


def test_the_index_compaction_matches_a_rebuild_from_the_store() -> None:
    """The live dense index after evictions is the one a restored model builds: same rows, same values."""
    model = OnlineRecommender(RecommenderConfig(seed=3, max_items=60, evict_fraction=0.2))
    for ev in churn(800, seed=3):
        model.learn_one(ev)
    live = model.index
    rows = {i: model.cooc_row(i) for i in model.items}
    model.rebuild_caches()
    again = model.index
    n = len(live)
    assert rows == {i: model.cooc_row(i) for i in model.items}  # the rows renumbered to the new index
    assert live.ids == again.ids
    assert (live.q[:n] == again.q[:n]).all() and (live.bias[:n] == again.bias[:n]).all()
    assert (live.active[:n] == again.active[:n]).all()
    names = {c: name for name, c in live.categories.items()}
    names_again = {c: name for name, c in again.categories.items()}
    assert [names.get(c) for c in live.category[:n].tolist()] == [names_again.get(c) for c in again.category[:n].tolist()]


def test_a_restore_after_evictions_has_exactly_the_live_users_and_items() -> None:
    """Deletions travel in the deltas: a restore brings back nothing evicted and loses nothing kept, in the live
    order (the index rows), recommends the same, and goes on evicting exactly as the live shard does."""
    cfg = RecommenderConfig(seed=0, max_users=60, max_items=80, user_idle_s=900.0, item_idle_s=1_500.0)
    events = churn(5_000, seed=4)
    table: dict[bytes, bytes] = {}
    shard = Shard.new(1, cfg)

    def feed(s: Shard, evs: list[dict], first: int) -> None:
        for i, e in enumerate(evs, first):
            s.apply(ShardRecord(TOPIC, i, Click(**{f: e.get(f) for f in Click._fields})))

    for start in range(0, 3_000, 250):
        feed(shard, events[start:start + 250], start)
        shard.checkpoint(table)
    assert shard.log.seq > 1 and shard.model.evicted_users > 500 and shard.model.evicted_items > 500
    again = Shard.restore(1, cfg, list(table.items()))
    assert again.log.refused == []
    assert list(again.model.users) == list(shard.model.users)
    assert list(again.model.items) == list(shard.model.items) == again.model.index.ids
    users = list(shard.model.users)[-10:]
    assert {u: again.model.recommend(u, 10) for u in users} == {u: shard.model.recommend(u, 10) for u in users}
    # both go on with the same clicks: the same evictions
    feed(shard, events[3_000:], 3_000)
    feed(again, events[3_000:], 3_000)
    assert list(again.model.users) == list(shard.model.users) and list(again.model.items) == list(shard.model.items)
    # and a restore from the checkpoint after that, which holds deltas with deletions, again matches
    shard.checkpoint(table)
    third = Shard.restore(1, cfg, list(table.items()))
    assert set(third.model.users) == set(shard.model.users) and list(third.model.items) == list(shard.model.items)


def test_a_delta_deletes_keys_and_a_key_deleted_and_written_again_comes_back_last() -> None:
    table: dict[bytes, bytes] = {}
    log = DeltaLog("t", 0)
    log.write(table, {"a": {"x": 1, "y": 2, "z": 3}}, "m0", image=True)
    log.write(table, {"a": {"x": 10}}, "m1", image=False, deleted={"a": ["x", "y", "never"]})
    _, found = DeltaLog.restore("t", 0, table.items())
    assert found is not None and found.parts == {"a": {"z": 3, "x": 10}} and list(found.parts["a"]) == ["z", "x"]
    assert found.meta == "m1"
