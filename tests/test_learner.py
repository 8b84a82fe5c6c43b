"""The recommender's learner process (streams/learning/learner.py), spawned for real and driven as the worker drives it."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from online_models.recommender import RecommenderConfig
from streams.learning.learner import Learner, LearnerDied
from streams.learning.shard import Click, ShardRecord, Shard
from wharf.simulator import ShopConfig, ShopSimulator

TOPIC = "clicks"


def _records(n: int, seed: int = 3) -> list[ShardRecord]:
    events = ShopSimulator(ShopConfig(seed=seed, n_items=400, n_users=300)).events(n)
    return [ShardRecord(TOPIC, i, Click(*(e.get(f) for f in Click._fields))) for i, e in enumerate(events)]


@pytest.fixture
async def learner():
    deaths: list[BaseException] = []
    one = Learner(0, RecommenderConfig(), on_death=deaths.append)
    one.start()
    one.deaths = deaths
    yield one
    one.stop()
    one.process.join(10)
    assert not one.process.is_alive(), "a stopped learner exits"


async def test_the_learner_learns_and_checkpoints_what_a_shard_in_the_worker_would(learner) -> None:
    """Same records, same model: the learner's answers equal an in-process shard's, and the table records its
    checkpoint hands back restore a shard that answers the same."""
    config = RecommenderConfig()
    records = _records(3000)
    here = Shard.new(5, config)
    for r in records:
        here.apply(r)
    loaded = learner.work("load", 5, [])
    learner.send("records", [(5, r) for r in records[:1500]])
    learner.send("records", [(5, r) for r in records[1500:]] + [(5, records[10])])  # a redelivered record is skipped
    writes = (await learner.work("checkpoint", [5, 6]))
    assert await loaded == (0, 0, {}, [])  # users, items, offsets, records refused
    assert writes[6] is None  # not held by this learner
    ops, records_written = writes[5]
    assert records_written == len(ops) > 1

    users = sorted(here.model.users)[:30]
    want = {u: [tuple(r) for r in here.model.recommend(u, 10)] for u in users}
    got = {u: await learner.ask("recommend", 5, u, 10) for u in users}
    assert got == want
    assert await learner.ask("recommend", 6, users[0], 10) is None

    table = {key: value for key, value in ops if value is not None}
    again = Shard.restore(5, config, list(table.items()))
    assert again.offsets == {TOPIC: len(records) - 1}
    assert {u: [tuple(r) for r in again.model.recommend(u, 10)] for u in users} == want

    stats = (await learner.ask("stats"))["shards"][5]
    assert (stats["clicks"], stats["skipped"], stats["learned"]) == (len(records), 1, len(records))


async def test_requests_are_answered_between_slices_of_queued_work(learner) -> None:
    """A request does not wait for the work queued before it: asked while 20,000 clicks are being learned,
    it is answered before they are."""
    records = _records(20_000, seed=4)
    await learner.work("load", 1, [])
    learner.send("records", [(1, r) for r in records])
    seen: list[int] = []
    while not seen or seen[-1] == 0:
        seen.append((await learner.ask("stats"))["shards"][1]["clicks"])
    started = time.perf_counter()
    recs = await learner.ask("recommend", 1, records[0].event.user_id, 10)
    answered_in = time.perf_counter() - started
    during = (await learner.ask("stats"))["shards"][1]["clicks"]
    assert recs and 0 < during < len(records), (during, answered_in)
    await learner.work("checkpoint", [1])  # in line with the records: after all of them
    assert (await learner.ask("stats"))["shards"][1]["clicks"] == len(records)


async def test_a_learner_that_dies_fails_its_requests_and_says_so(learner) -> None:
    await learner.work("load", 0, [])
    learner.send("records", [(0, r) for r in _records(20_000, seed=5)])
    pending = learner.work("checkpoint", [0])
    os.kill(learner.process.pid, signal.SIGKILL)
    with pytest.raises(LearnerDied):
        await asyncio.wait_for(pending, 10)
    assert learner.deaths, "the worker is told (it stops)"
    with pytest.raises(LearnerDied):
        learner.send("records", [])
    with pytest.raises(LearnerDied):
        await learner.ask("stats")


_STOPPED_AT_ONCE = """
import asyncio, os, signal, sys
from online_models.recommender import RecommenderConfig
from streams.learning.learner import Learner

async def main():
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    one = Learner(0, RecommenderConfig(), on_death=lambda e: None)
    one.start()
    print(one.process.pid, flush=True)
    await stop.wait()
    stats = await asyncio.wait_for(one.ask("stats"), 60)
    print("answered", stats["process"]["pid"], os.getpgid(one.process.pid) != os.getpgid(0), flush=True)
    one.stop()
    one.process.join(10)

asyncio.run(main())
"""


def test_a_stop_sent_to_the_workers_group_as_its_learner_starts_reaches_the_worker_alone() -> None:
    """A supervisor's SIGTERM to the worker's process group, sent while a learner it just started is still importing
    (about a second, before it leaves the group), is the worker's to handle: the learner still answers the worker's
    stop. Before, it killed the learner, and the worker's stop checkpoint failed."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    for delay in (0.0, 0.2):
        worker = subprocess.Popen([sys.executable, "-c", _STOPPED_AT_ONCE], stdout=subprocess.PIPE, text=True,
                                  env=env, start_new_session=True)
        try:
            learner_pid = int(worker.stdout.readline())
            time.sleep(delay)
            os.killpg(worker.pid, signal.SIGTERM)
            out, _ = worker.communicate(timeout=90)
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
        assert out.split() == ["answered", str(learner_pid), "True"], (delay, out)
        assert worker.returncode == 0
