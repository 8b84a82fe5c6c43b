"""The chunked delta log behind the recommender's checkpoints (streams/state/deltalog.py), on a plain dict as the table."""

from __future__ import annotations

import random

from streams.state import deltalog
from streams.state.deltalog import DeltaLog


def _restore(table: dict[bytes, bytes], p: int = 3):
    return DeltaLog.restore("r", p, list(table.items()))


def test_image_then_deltas_restore_to_the_last_commit(monkeypatch) -> None:
    monkeypatch.setattr(deltalog, "CHUNK_BYTES", 64)  # several chunks per write
    table: dict[bytes, bytes] = {}
    log = DeltaLog("r", 3)
    state = {f"u{i}": i for i in range(50)}
    assert log.needs_image()
    log.write(table, {"users": dict(state)}, {"offset": 10}, image=True)
    for step in range(1, 4):
        changed = {f"u{i}": i * 10 + step for i in range(step, 20, 3)} | {f"new{step}": step}
        state.update(changed)
        assert not log.needs_image()
        log.write(table, {"users": changed}, {"offset": 10 + step}, image=False)
    assert sum(k.endswith(b"/c") for k in table) == 4
    assert len(table) > 8  # chunked, not one record per write
    restored_log, found = _restore(table)
    assert found is not None and found.parts["users"] == state and found.meta == {"offset": 13}
    assert found.generation == 0 and found.deltas == 3
    assert restored_log.needs_image()  # a restored log starts a clean generation


def test_an_uncommitted_delta_is_not_applied(monkeypatch) -> None:
    monkeypatch.setattr(deltalog, "CHUNK_BYTES", 32)
    table: dict[bytes, bytes] = {}
    log = DeltaLog("r", 3)
    log.write(table, {"items": {"a": 1}}, "m0", image=True)
    log.write(table, {"items": {"a": 2}}, "m1", image=False)
    before = dict(table)
    log.write(table, {"items": {"a": 3, "b": "x" * 200}}, "m2", image=False)
    crashed = {k: v for k, v in table.items() if k in before or not k.endswith(b"/c")}  # chunks written, commit lost
    _, found = _restore(crashed)
    assert found is not None and found.parts == {"items": {"a": 2}} and found.meta == "m1"
    # a missing chunk of a committed delta (cannot happen in Kafka's order, but never half-apply)
    torn = {k: v for k, v in table.items() if not k.endswith(b"/000000002/1")}
    _, found = _restore(torn)
    assert found is not None and found.meta == "m1"


def test_compaction_writes_a_new_image_and_deletes_the_old_generation_after_its_commit() -> None:
    table: dict[bytes, bytes] = {}
    log = DeltaLog("r", 3, compact_factor=1.0)
    rng = random.Random(0)
    state = {f"i{i}": rng.random() for i in range(100)}
    log.write(table, {"items": dict(state)}, 0, image=True)
    step = 0
    while not log.needs_image():
        step += 1
        changed = {f"i{rng.randrange(100)}": rng.random() for _ in range(30)}
        state.update(changed)
        log.write(table, {"items": changed}, step, image=False)
    old_keys = set(table)
    log.write(table, {"items": dict(state)}, step, image=True)
    assert not old_keys & set(table)  # generation 0 is gone once generation 1 is committed
    _, found = _restore(table)
    assert found is not None and found.generation == 1 and found.parts["items"] == state and found.meta == step


def test_an_uncommitted_image_leaves_the_previous_generation_valid() -> None:
    table: dict[bytes, bytes] = {}
    log = DeltaLog("r", 3)
    log.write(table, {"users": {"a": 1}}, "g0", image=True)
    log.write(table, {"users": {"a": 2}}, "g0d1", image=False)
    partial = dict(table)
    log.write(table, {"users": {"a": 2, "b": 5}}, "g1", image=True)
    for key in table:
        if key.startswith(b"r/3/000001/") and not key.endswith(b"/c"):
            partial[key] = table[key]  # new image's chunks arrived, its commit and the deletions did not
    restored_log, found = _restore(partial)
    assert found is not None and found.generation == 0 and found.parts == {"users": {"a": 2}}
    restored_log.write(partial, {"users": {"a": 2}}, "g2", image=True)  # the next image cleans up both
    assert all(k.startswith(b"r/3/000002/") for k in partial)


def test_other_partitions_and_prefixes_are_ignored() -> None:
    table: dict[bytes, bytes] = {}
    DeltaLog("r", 3).write(table, {"users": {"a": 1}}, "p3", image=True)
    DeltaLog("r", 4).write(table, {"users": {"a": 9}}, "p4", image=True)
    table[b"u/3/legacy"] = b"x"
    _, found = _restore(table, 3)
    assert found is not None and found.parts == {"users": {"a": 1}} and found.meta == "p3"
    _, nothing = _restore(table, 5)
    assert nothing is None


def test_recommender_shard_round_trip_through_its_log_and_v1_pickles_are_not_loaded() -> None:
    """A shard checkpointed into a table and restored recommends exactly as before; v1 keys (pickles) are refused,
    not loaded, and deleted by the next image."""
    import pickle

    from online_models.recommender import RecommenderConfig
    from streams.learning.shard import Click, ShardRecord, Shard
    from schemas.settings import get_settings
    from wharf.simulator import ShopConfig, ShopSimulator

    topic = get_settings().topic_clicks
    events = list(ShopSimulator(ShopConfig(seed=1, n_items=300, n_users=200)).events(3000))
    table: dict[bytes, bytes] = {}
    config = RecommenderConfig()
    shard = Shard.new(2, config)
    for i, e in enumerate(events):
        shard.apply(ShardRecord(topic, i, Click(**{f: e.get(f) for f in Click._fields})))
        if i % 700 == 699:
            shard.checkpoint(table)
    shard.checkpoint(table)
    assert shard.log.seq > 1  # an image and deltas, not one write
    users = sorted(shard.model.users)[:40]
    before = {u: shard.model.recommend(u, 10) for u in users}

    again = Shard.restore(2, config, list(table.items()))
    assert again.offsets == shard.offsets and len(again.model.items) == len(shard.model.items)
    assert {u: again.model.recommend(u, 10) for u in users} == before
    assert again.log.refused == []

    v1 = {f"u/2/{u}".encode(): pickle.dumps(st) for u, st in shard.model.users.items()}
    v1 |= {f"i/2/{i}".encode(): pickle.dumps(st) for i, st in shard.model.items.items()}
    v1[b"g/2"] = pickle.dumps((1, shard.model.state, shard.offsets))
    fresh = Shard.restore(2, config, list(v1.items()))
    assert fresh.offsets == {} and not fresh.model.users and not fresh.model.items
    assert len(fresh.log.refused) == 1 and "state version 1 (pickled)" in fresh.log.refused[0]
    fresh.checkpoint(v1)  # the first checkpoint writes the new layout and drops the old keys
    assert v1 and all(k.startswith(b"r/2/") for k in v1)


def test_pieces_restore_whole_and_an_abandoned_write_is_ignored() -> None:
    """A write in pieces (the writer may yield between them) restores as one; one left half-way is not applied."""
    table: dict[bytes, bytes] = {}
    log = DeltaLog("r", 3, piece_entries=7)
    state = {"users": {f"u{i}": i for i in range(30)}, "items": {f"i{i}": -i for i in range(16)}}
    steps = list(log.steps(table, {k: dict(v) for k, v in state.items()}, "m0", image=True))
    assert len(steps) == 5 + 3 + 1  # 30 users in pieces of 7, 16 items, then the commit
    assert steps == sorted(steps) and steps[-1] == sum(1 for _ in table)
    _, found = _restore(table)
    assert found is not None and found.parts == state and found.meta == "m0"

    half = log.steps(table, {"users": {f"u{i}": 100 + i for i in range(30)}}, "m1", image=False)
    next(half), next(half)  # two pieces written, then the writer gave up (e.g. its partition was revoked)
    _, found = _restore(table)
    assert found is not None and found.parts == state and found.meta == "m0"


def test_logs_written_as_pickles_are_refused_and_never_unpickled(tmp_path) -> None:
    """Logs written by earlier versions (pickles) are refused: nothing in them runs, restore goes on without them."""
    import pickle

    marker = tmp_path / "ran"

    class Boom:
        def __reduce__(self):
            return (marker.write_text, ("pickle ran",))

    blob = pickle.dumps({"users": {"a": Boom()}})
    table = {b"r/3/000000/000000000/0": blob[:10], b"r/3/000000/000000000/1": blob[10:],
             b"r/3/000000/000000000/c": pickle.dumps(([2], Boom()))}
    log, found = _restore(table)
    assert found is None and not marker.exists()
    assert len(log.refused) == 1 and "pickle" in log.refused[0] and "r/3/000000/000000000/c" in log.refused[0]
    # a crafted piece under a valid commit of the new format: the image is refused, an older generation is used
    good = DeltaLog("r", 3)
    good.write(table, {"users": {"a": 1}}, "m0", image=True)
    table[b"r/3/000009/000000000/0"] = blob
    table[b"r/3/000009/000000000/c"] = DeltaLog("r", 3).codec.dumps(([1], "crafted"))
    log, found = _restore(table)
    assert found is not None and found.meta == "m0" and found.parts == {"users": {"a": 1}} and not marker.exists()
    assert any("000009" in r for r in log.refused)
    assert log.generation == 9  # the next image starts above everything found, which it then deletes
    # keys that are not a log's, and commits that claim more chunks than exist, are refused, not fatal
    table[b"r/3/not-a-key"] = b"x"
    table[b"r/3/000010/000000000/c"] = DeltaLog("r", 3).codec.dumps(([10**9], "crafted"))
    log, found = _restore(table)
    assert found is not None and found.meta == "m0" and len(log.refused) == 3
