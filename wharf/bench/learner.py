"""`wharf bench learner`: a recommender learner process through hours of the demo's shop, in minutes.

The hour-long soak (`wharf bench soak`) saw the learner grow 20-30 % an hour and could not say whether it would
level off. This drives one real learner process (`streams/learning/learner.py`: its pipes, its bulk thread, its
collector policy) exactly as the worker does, with the demo's shop (`wharf.demo.demo_shop`) in simulated time: the
clicks in batches to their partitions' shards, a checkpoint every `commerce_checkpoint_seconds` and a snapshot
every `--snapshot-seconds` of simulated time. It prints, every simulated quarter hour, the learner's RSS beside what the
shards hold (users, items, co-occurrence entries), then the growth per simulated hour over the last `--last` hours.

What it does not compress: the collector's freeze (every second of wall time) and sweep (every 30 minutes of
wall time), and the answer cache's expiry; no recommendation requests are asked (the soak asks none either).
"""

from __future__ import annotations

import asyncio
import time
import zlib

import typer

from wharf.bench.memory import rss_mb
from wharf.bench.soak import Series, growth_table


async def drive(hours: float, partitions: int, snapshot_s: float, checkpoint_s: float, rate: float, seed: int,
                every_h: float = 0.25) -> Series:
    from online_models.recommender import RecommenderConfig
    from streams.learning.learner import Learners
    from streams.learning.shard import Click, ShardRecord
    from wharf.demo import demo_shop

    died: list[BaseException] = []
    learner = Learners(1, RecommenderConfig(), on_death=died.append).of(0)
    for p in range(partitions):
        await learner.work("load", p, [])
    series = Series("learner")
    offsets = [0] * partitions
    batch: list[tuple[int, ShardRecord]] = []
    start = time.time()
    t0 = last_ck = last_snap = None
    due = 0.0
    print(f"{'simulated':>9} {'wall s':>7} {'RSS MB':>7} {'users':>7} {'items':>7} {'co-occurrence':>14}")
    try:
        for kind, e in demo_shop(seed, rate, 1_700_000_000.0).stream():
            if kind != "click":
                continue
            ts = e["ts"]
            t0 = t0 or ts
            last_ck, last_snap = last_ck or ts, last_snap or ts
            p = zlib.crc32(e["user_id"].encode()) % partitions  # keyed by user, as the shop sends them
            offsets[p] += 1
            batch.append((p, ShardRecord("clicks", offsets[p], Click(e["user_id"], e["item_id"], e["action"], ts,
                                                                     e.get("session_id"), e.get("category"), e.get("price")))))
            if len(batch) >= 100 or ts - last_ck >= checkpoint_s:
                learner.send("records", batch)
                batch = []
            if ts - last_ck >= checkpoint_s:
                await learner.work("checkpoint", list(range(partitions)))
                last_ck = ts
            if ts - last_snap >= snapshot_s:
                await learner.work("snapshot", 10, 10, 1000)
                last_snap = ts
            sim = ts - t0
            if sim >= due * 3600:
                stats = (await learner.ask("stats"))["shards"].values()
                mb = rss_mb(learner.process.pid) or 0.0
                series.samples.append((sim, mb))
                print(f"{sim / 3600:>8.1f}h {time.time() - start:>7.0f} {mb:>7.0f} {sum(s['users'] for s in stats):>7} "
                      f"{sum(s['items'] for s in stats):>7} {sum(s['cooc'] for s in stats):>14,}", flush=True)
                due += every_h
            if sim > hours * 3600 or died:
                break
    finally:
        learner.stop()
    if died:
        raise RuntimeError(f"the learner died: {died[0]}")
    return series


def bench_learner(
    hours: float = typer.Option(6.0, help="Simulated hours of the demo's shop."),
    last: float = typer.Option(2.0, help="The growth figure covers the last this many simulated hours."),
    partitions: int = typer.Option(8, help="Click partitions (shards) in the one learner, as a worker owning them all."),
    rate: float = typer.Option(20.0, help="Shop events per second (simulated time), as in `wharf demo`."),
    snapshot_seconds: float = typer.Option(15.0, help="Simulated seconds between snapshots (the soak's pace)."),
    seed: int = typer.Option(7),
) -> None:
    """One real learner process through hours of the demo's shop in simulated time: RSS beside the shards' state."""
    from schemas.settings import get_settings

    checkpoint_s = get_settings().commerce_checkpoint_seconds
    print(f"learner soak: {hours:g} simulated hours of the demo's shop ({rate:g} events/s), {partitions} shards, a checkpoint "
          f"every {checkpoint_s:g} s and a snapshot every {snapshot_seconds:g} s of simulated time")
    series = asyncio.run(drive(hours, partitions, snapshot_seconds, checkpoint_s, rate, seed))
    end = series.samples[-1][0]
    print(growth_table([series], max(0.0, end - last * 3600), end).replace(" min", " simulated min"))
