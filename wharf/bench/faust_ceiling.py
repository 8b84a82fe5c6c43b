"""Reference rates for `wharf bench commerce`: the clicks delivered to two agents that only ack.

A worker's clicks go to two agents: the recommender and the raw-click storage agent. This program is the
same app (`streams/runtime/app.py`: its settings, fast dispatch and event loop) with two agents on the clicks
topic that ack each batch and do nothing else, batched as the recommender is: either Faust agents
(Faust's per-record path: the Event, the channel queues, the Stream) or batch agents
(`streams/runtime/batches.py`, what the worker uses for the clicks). The rate at which both have every click
is what a worker could reach with no model and no sink: the ceiling of the worker's figure on the
same machine in the same run.

Usage: `python -m wharf.bench.faust_ceiling N FILE [faust|batch]`, with the bench's settings in the environment;
writes clicks/s to FILE.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

BATCH = 10_000  # agents/recommender.CLICK_BATCH (not imported: that module declares the whole commerce path)


def main(n: int, out: Path, delivery: str = "faust") -> None:
    from wharf.cli import run_faust_worker, use_event_loop

    use_event_loop()
    from streams.runtime.app import app, settings

    clicks = app.topic(settings.topic_clicks, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    counts = [0, 0]
    first: list[tuple[float, int] | None] = [None, None]  # each agent's first batch: when, and its size

    def count(i: int, events: list) -> None:
        for event in events:
            event.ack()
        counts[i] += len(events)
        if first[i] is None:
            first[i] = (time.perf_counter(), len(events))
        if min(counts) >= n and all(f is not None and counts[j] > f[1] for j, f in enumerate(first)):
            # From each agent's first batch on (its clicks were fetched before the clock started).
            now = time.perf_counter()
            out.write_text(f"{min((counts[j] - size) / (now - t) for j, (t, size) in enumerate(first)):.0f}")
            os._exit(0)  # a throwaway consumer group: nothing to commit or shut down

    def faust_agent(i: int) -> Any:
        async def agent(stream: Any) -> None:
            async for events in stream.noack_take(BATCH, within=settings.commerce_batch_seconds):
                count(i, events)

        return agent

    def batch_agent(i: int) -> Any:
        async def agent(batch_agent: Any) -> None:
            async for events in batch_agent.batches():
                count(i, events)

        return agent

    for i in range(2):
        name = f"wharf.bench-no-op-{i}"
        if delivery == "batch":
            app.batch_agents.agent(clicks, name=name, max_records=BATCH, within=settings.commerce_batch_seconds)(batch_agent(i))
        else:
            app.agent(clicks, name=name)(faust_agent(i))
    run_faust_worker(app, "warning")


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:])
