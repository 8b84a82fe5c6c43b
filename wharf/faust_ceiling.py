"""A reference rate for `wharf bench commerce`: Faust alone, delivering the clicks to two agents that only ack.

A worker's clicks go through Faust's per-record path twice: to the recommender and to the raw-click
storage agent. This program is the same app (`streams/app.py`: its settings, fast dispatch and event
loop) with two agents on the clicks topic that ack each batch and do nothing else, batched as the
recommender is. The rate at which both have every click is what a worker could reach with no model
and no sink: the ceiling of the worker's figure on the same machine in the same run.

Usage: `python -m wharf.faust_ceiling N FILE`, with the bench's settings in the environment; writes clicks/s to FILE.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

BATCH = 10_000  # agents/commerce.CLICK_BATCH (not imported: that module declares the whole commerce path)


def main(n: int, out: Path) -> None:
    from wharf.cli import run_faust_worker, use_event_loop

    use_event_loop()
    from streams.app import app, settings

    clicks = app.topic(settings.topic_clicks, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    counts = [0, 0]
    first: list[tuple[float, int] | None] = [None, None]  # each agent's first batch: when, and its size

    def no_op(i: int) -> Any:
        async def agent(stream: Any) -> None:
            async for events in stream.noack_take(BATCH, within=settings.commerce_batch_seconds):
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

        return agent

    for i in range(2):
        app.agent(clicks, name=f"wharf.bench-no-op-{i}")(no_op(i))
    run_faust_worker(app, "warning")


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
