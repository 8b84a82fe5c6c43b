"""`wharf.bench.faust_ceiling`, the delivery references (Faust agents, batch agents) of `wharf bench commerce`, on the real broker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from tests.test_pipeline import produce
from tests.workers import ROOT
from wharf.infra.kafka import ensure_topics


@pytest.mark.parametrize("delivery", ["faust", "batch"])
def test_faust_ceiling_waits_for_both_agents_and_writes_a_rate(delivery, stack, unique, tmp_path):
    topic = f"test.ceiling.{unique}"
    out = tmp_path / "rate.txt"
    env = {**os.environ, "WHARF_APP_ID": f"wharf-test-ceiling-{unique}", "WHARF_TOPIC_CLICKS": topic,
           "WHARF_STATE_DIR": str(tmp_path / "state"), "WHARF_WEB_PORT": str(stack.web_port + 38)}
    asyncio.run(ensure_topics(stack, [topic], stack.topic_partitions))
    proc = subprocess.Popen([sys.executable, "-m", "wharf.bench.faust_ceiling", "400", str(out), delivery], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:

        async def trickle() -> None:  # bursts until it is done: each agent gets batches after its first one
            i = 0
            while proc.poll() is None and i < 20_000:
                await produce(stack, topic, [(f"u{j}".encode(), b"{}") for j in range(i, i + 50)])
                i += 50
                await asyncio.sleep(0.3)

        asyncio.run(trickle())
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert float(out.read_text()) > 0  # clicks after each agent's first batch, over the time since
