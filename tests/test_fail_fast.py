"""An agent that raises stops the worker (exit 1), and the next worker gets the batch it never acked.

Faust's default supervisor restarts a crashed agent and carries on: the batch it held stays unacked, its
partition's commits stop there and every later rebalance waits for those acks. The worker here is the
real `wharf worker` (all of Wharf's agents), plus one agent on a test topic that fails on a poisoned
record the first time and writes down each record it is given: a Faust agent, and a batch agent
(`streams/runtime/batches.py`, which Faust's supervisor does not watch).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.conftest import topic_env
from tests.workers import WorkerProcess
from tests.test_pipeline import produce, wait_until
from wharf.infra.kafka import ensure_topics

SCRIPT = """
import os, sys
from streams.runtime.app import app
from wharf.cli import app as cli

probe = app.topic(os.environ["PROBE_TOPIC"], key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

# All three records in one batch, whatever the fetches: with 0.1 s a fast-starting worker was once given "first"
# alone, acked and committed it, and the next worker rightly began at "poison" (CI, 6 Dec).
WITHIN = 2.0


def look(events):
    with open(os.environ["PROBE_SEEN"], "ab") as f:
        f.write(b"".join(e.value + b"\\n" for e in events))
    if os.environ.get("PROBE_FAIL") and any(e.value == b"poison" for e in events):
        raise RuntimeError("injected agent failure")
    for e in events:
        e.ack()

if os.environ["PROBE_KIND"] == "batch":  # streams/runtime/batches.py
    @app.batch_agents.agent(probe, name="wharf.test-probe", max_records=100, within=WITHIN)
    async def probe_agent(agent):
        async for events in agent.batches():
            look(events)
else:
    @app.agent(probe, name="wharf.test-probe")
    async def probe_agent(stream):
        async for events in stream.noack_take(100, within=WITHIN):
            look(events)

cli(["worker", "--loglevel", "warning"])
"""


def _worker(env: dict[str, str], log: Path) -> WorkerProcess:
    return WorkerProcess(env, int(env["WHARF_WEB_PORT"]), log, argv=[sys.executable, "-c", SCRIPT]).launch()


@pytest.mark.parametrize("kind", ["faust", "batch"])
def test_a_crashed_agent_stops_the_worker_and_its_batch_is_redelivered(kind, stack, unique, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WHARF_APP_ID": f"wharf-test-crash-{unique}",
           "WHARF_STATE_DIR": str(tmp_path / "state"), "WHARF_WEB_PORT": str(stack.web_port + 37),
           "WHARF_CLICKHOUSE_URL": "chdb://", "WHARF_COMMERCE_SENTIMENT_ENCODER": "lexicon",
           "PROBE_TOPIC": f"test.probe.{unique}", "PROBE_SEEN": str(tmp_path / "seen.txt"), "PROBE_KIND": kind}
    env.update(topic_env(unique))
    asyncio.run(ensure_topics(stack, [env["PROBE_TOPIC"]], 1))
    asyncio.run(produce(stack, env["PROBE_TOPIC"], [(b"k", b"first"), (b"k", b"poison"), (b"k", b"last")]))
    seen = Path(env["PROBE_SEEN"])

    first = _worker({**env, "PROBE_FAIL": "1"}, tmp_path / "first.log")
    try:
        asyncio.run(wait_until(lambda: first.proc.poll() is not None, 120, "the worker to stop after the agent failed"))
    finally:
        first.stop(timeout=0)
    log = (tmp_path / "first.log").read_text(errors="replace")
    assert first.proc.returncode != 0, log[-3000:]
    assert "injected agent failure" in log
    assert b"poison" in seen.read_bytes()

    second = _worker(env, tmp_path / "second.log")
    try:
        # Nothing of the failed batch was acked, so nothing was committed: the next worker gets all of it.
        asyncio.run(wait_until(lambda: seen.read_bytes().count(b"poison") == 2 and seen.read_bytes().count(b"first") == 2, 120,
                               "the next worker to be given the unacked batch again"))
    finally:
        second.stop()
