"""streams/runtime/stopping.py `commit_acked`: the stop's commit covers every ack, also with a commit under way.

Faust's own `Consumer.commit` and `maybe_wait_for_commit_to_finish` run here, on an object with only what they
read (the app's `client_only`, `_commit_fut`, the loop); its `force_commit`, which would talk to Kafka, records
how many acks each commit covered. The clean-stop tests run the whole stop on real servers."""

from __future__ import annotations

import asyncio
from types import MethodType, SimpleNamespace

from faust.transport.consumer import Consumer

from streams.runtime.stopping import commit_acked


def _consumer(acked: list[int], gate: asyncio.Event, commits: list[int]) -> SimpleNamespace:
    c = SimpleNamespace(app=SimpleNamespace(client_only=False), loop=asyncio.get_running_loop(), _commit_fut=None)

    async def force_commit(self, topics=None, start_new_transaction=True) -> bool:  # noqa: ANN001
        covered = acked[0]  # what is acked when the commit begins
        await gate.wait()  # Kafka's round trip
        commits.append(covered)
        return True

    c.force_commit = MethodType(force_commit, c)
    c.commit = MethodType(Consumer.commit, c)
    c.maybe_wait_for_commit_to_finish = MethodType(Consumer.maybe_wait_for_commit_to_finish, c)
    return c


async def test_the_stop_commits_the_acks_that_came_after_a_commit_under_way() -> None:
    acked, gate, commits = [5], asyncio.Event(), []
    c = _consumer(acked, gate, commits)
    under_way = asyncio.ensure_future(c.commit())  # the batch fetch's (or Faust's timer's), 5 acks
    await asyncio.sleep(0)
    acked[0] = 8  # the stop's last checkpoint released 3 more
    plain = asyncio.ensure_future(c.commit())
    ours = asyncio.ensure_future(commit_acked(c))
    await asyncio.sleep(0)
    gate.set()
    await asyncio.wait_for(asyncio.gather(under_way, plain, ours), 5)
    assert plain.result() is False  # Faust's commit waited for the one under way and committed nothing more
    assert commits == [5, 8]  # commit_acked committed the 3 acks that came after


async def test_with_no_commit_under_way_the_stop_commits_once() -> None:
    acked, gate, commits = [4], asyncio.Event(), []
    gate.set()
    await asyncio.wait_for(commit_acked(_consumer(acked, gate, commits)), 5)
    assert commits == [4]
