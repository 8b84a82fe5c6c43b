"""`wharf bench commerce`: the recommender in-process and in a worker, the review model, the Faust ceiling."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import typer

from wharf import progress
from streams.runtime.kafka_auth import kafka_client
from schemas.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
REVIEWS = ROOT.parent / "shared" / "datasets" / "sentiment" / "amazon_cells_labelled.txt"


# --- wharf bench commerce ---------------------------------------------------------------------------------

OPEN_LOOP_RATE = 500.0  # requests/s of the open-loop latency rounds: about half of what one worker serves here


def bench_commerce(
    clicks: int = typer.Option(30_000, help="Simulated clicks (the same ones for every click figure)."),
    items: int = typer.Option(5_000, help="Catalogue size of the simulator."),
    users: int = typer.Option(5_000, help="Users of the simulator."),
    reviews: int = typer.Option(500, help="Reviews per encoder (from the shared Amazon review file)."),
    encoders: str = typer.Option("lexicon,hashing,minilm", help="Sentiment encoders to time."),
    requests: int = typer.Option(2_000, help="Recommendation requests against the worker."),
    concurrency: int = typer.Option(16, help="Requests in flight at once."),
    rounds: int = typer.Option(3, min=1, help="Rounds of requests at that concurrency on the caught-up worker (each one printed)."),
    worker: bool = typer.Option(True, help="Also start a real worker: Kafka consume rate, worker click rate and HTTP latency."),
) -> None:
    """Throughput of the commerce path: clicks/s through the recommender, reviews/s through sentiment,
    recommendation latency under concurrent load, and the raw reference rates of the same run."""
    from wharf.simulator import ShopConfig, ShopSimulator

    sim = ShopSimulator(ShopConfig(seed=0, n_items=items, n_users=users))
    events = list(sim.events(clicks))
    now = time.time()
    shift = now - events[-1]["ts"] - 1
    for e in events:  # recent times, so the Kafka path's age check accepts them
        e["ts"] += shift
    print(f"{len(events):,} simulated clicks, {items:,} items, {users:,} users; {os.cpu_count()} CPUs")

    phases = progress.Phases(4 if worker else 3, "bench commerce")
    phases.next("reference: model learn_one")
    ref = _bench_learn_one(events)
    phases.next("recommender update path in-process")
    path = _bench_update_path(events)
    print(f"model learn_one, tight loop (reference):       {ref:>9,.0f} clicks/s")
    print(f"recommender update path in-process (parse JSON + learn + per-batch checkpoint pickling): {path:>9,.0f} clicks/s")

    phases.next("sentiment encoders")
    _bench_sentiment([e.strip() for e in encoders.split(",") if e.strip()], reviews)

    if worker:
        phases.next("a real worker: clicks through Kafka, then recommendation requests")
        try:
            asyncio.run(_bench_worker(events, requests, concurrency, rounds))
        except Exception as exc:  # noqa: BLE001 - the in-process figures above still stand
            print(f"worker benchmark failed: {exc}")



def _bench_learn_one(events: list[dict]) -> float:
    from online_models.recommender import OnlineRecommender

    from agents.recommender import recommender_config

    model = OnlineRecommender(recommender_config())
    t = time.perf_counter()
    for e in events:
        model.learn_one(e)
    return len(events) / (time.perf_counter() - t)


def _bench_update_path(events: list[dict]) -> float:
    """The per-record work of the agent and its learner without Kafka, in one process: JSON bytes -> validated click
    -> learn -> checkpoint per batch."""
    from agents.recommender import CLICK_BATCH, as_record, recommender_config
    from schemas import codec
    from streams.learning.shard import Shard
    from schemas.settings import get_settings

    topic = get_settings().topic_clicks
    payloads = [codec.dumps({k: e[k] for k in ("event_id", "user_id", "session_id", "item_id", "action", "ts", "price", "category")
                             if e.get(k) is not None}) for e in events]
    shard = Shard.new(0, recommender_config())
    table: dict[bytes, bytes] = {}
    now = time.time() + 1
    t = time.perf_counter()
    for i, payload in enumerate(payloads):
        shard.apply(as_record(topic, i, payload, now))
        if i % CLICK_BATCH == CLICK_BATCH - 1:
            shard.checkpoint(table)
    shard.checkpoint(table)
    took = time.perf_counter() - t
    if shard.clicks != len(events):
        print(f"  (only {shard.clicks} of {len(events)} clicks were valid)")
    return len(events) / took


def _bench_sentiment(encoders: list[str], n: int) -> None:
    from online_models.evaluation.sentiment import measure_throughput

    if not REVIEWS.is_file():
        print(f"sentiment: {REVIEWS} not found; skipped")
        return
    rows = [line.rsplit("\t", 1) for line in REVIEWS.read_text().splitlines() if "\t" in line][:n]
    texts = [r[0] for r in rows]
    positives = [r[1].strip() == "1" for r in rows]
    import torch

    torch.set_num_threads(1)  # as in the worker
    print(f"sentiment, {len(texts)} reviews, 1 torch thread (predict + learn; the agent runs batched):")
    for enc in encoders:
        try:
            r = measure_throughput(enc, texts, positives, batch_size=64)
        except Exception as exc:  # noqa: BLE001 - e.g. MiniLM weights missing
            print(f"  {enc:<8} failed: {exc}")
            continue
        print(f"  {enc:<8} {r.batched:>8,.0f} reviews/s batched, {r.one_at_a_time:>8,.0f} one by one (load {r.load_seconds:.1f}s)")


async def _bench_worker(events: list[dict], requests: int, concurrency: int, rounds: int) -> None:
    """A real worker with its own topics and state: raw consume rate, worker click rate, HTTP latency."""
    from wharf.infra import remove_bench_run
    from schemas.settings import get_settings

    s = get_settings()
    tag = uuid.uuid4().hex[:8]
    try:
        await _bench_worker_run(tag, events, requests, concurrency, rounds)
    finally:
        await remove_bench_run(s, tag, _bench_database_url(s.clickhouse_url, tag))


def _bench_database_url(clickhouse_url: str, tag: str) -> str | None:
    """The bench worker's own database on the ClickHouse server; None: it runs on chdb in its state folder."""
    return clickhouse_url.rsplit("/", 1)[0] + f"/bench_{tag}" if clickhouse_url.startswith("clickhouse://") else None


def _cpu_times() -> list[int] | None:
    """The machine's CPU time counters (Linux `/proc/stat`), None elsewhere."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None


def _stolen_since(before: list[int] | None) -> str:
    """The share of CPU time the hypervisor gave to other machines since `before` (`steal`): on a shared
    virtual machine, what no code here controls; printed beside each latency round with the machine's idle share
    (none left: the worker, Kafka and the load generator compete for the cores)."""
    after = _cpu_times()
    if before is None or after is None:
        return ""
    spent = [b - a for a, b in zip(before, after, strict=True)]
    total = max(sum(spent), 1)
    return f", CPU steal {100 * spent[7] / total:.0f} %, idle {100 * (spent[3] + spent[4]) / total:.0f} %"


async def _produce_clicks(settings: Settings, topic: str, events: list[dict]) -> None:
    from aiokafka import AIOKafkaProducer

    from schemas import codec

    producer = AIOKafkaProducer(**kafka_client(settings), acks="all", linger_ms=20, max_batch_size=256 * 1024)
    await producer.start()
    try:
        for e in events:
            await producer.send(topic, codec.dumps(e), key=e["user_id"].encode())
        await producer.flush()
    finally:
        await producer.stop()


def _faust_ceiling(env: dict[str, str], n: int, delivery: str) -> str:
    """The same clicks delivered to two agents that only ack (`wharf.bench.faust_ceiling`): Faust's agents, or batch agents."""
    label = {"faust": "Faust alone, two no-op Faust agents on the clicks (reference):",
             "batch": "batch delivery alone, two no-op batch agents (the worker's click delivery; reference):"}[delivery]
    out = Path(env["WHARF_STATE_DIR"]) / f"ceiling-{delivery}.txt"
    try:
        subprocess.run([sys.executable, "-m", "wharf.bench.faust_ceiling", str(n), str(out), delivery], cwd=ROOT, env=env,
                       capture_output=True, timeout=180)
        return f"{label} {float(out.read_text()):>9,.0f} clicks/s"
    except (subprocess.TimeoutExpired, OSError, ValueError) as exc:
        return f"{label} failed ({type(exc).__name__}: {exc})"


async def _bench_worker_run(tag: str, events: list[dict], requests: int, concurrency: int, rounds: int) -> None:
    import secrets

    import aiohttp
    import numpy as np
    from aiokafka import AIOKafkaConsumer

    from wharf.infra.kafka import ensure_topics
    from schemas.settings import get_settings

    from streams.runtime.loopwatch import LoopWatch

    s = get_settings()
    topic = f"bench.clicks.{tag}"
    state = Path(tempfile.mkdtemp(prefix="wharf-bench-"))
    port = s.web_port + 100
    env = {**os.environ, "WHARF_APP_ID": f"wharf-bench-{tag}", "WHARF_TOPIC_CLICKS": topic, "WHARF_STATE_DIR": str(state),
           "WHARF_WEB_PORT": str(port), "WHARF_COMMERCE_SENTIMENT_ENCODER": "lexicon",
           "WHARF_COMMERCE_SNAPSHOT_SECONDS": "3600", "PYTHONUNBUFFERED": "1",
           "WHARF_WEB_OPERATOR_TOKENS": secrets.token_urlsafe(24)}  # the bench's own: /stats, /recommendations
    for name in ("reviews", "dead_letters", "recommendations", "sentiment", "alerts", "catalogue", "item_also_viewed", "sensor_readings"):
        env[f"WHARF_TOPIC_{name.upper()}"] = f"bench.{name}.{tag}"
    env["WHARF_CLICKHOUSE_URL"] = _bench_database_url(s.clickhouse_url, tag) or "chdb://"
    await ensure_topics(s, [v for k, v in env.items() if k.startswith("WHARF_TOPIC_")], s.topic_partitions)

    await _produce_clicks(s, topic, events)

    consumer = AIOKafkaConsumer(topic, **kafka_client(s), auto_offset_reset="earliest", enable_auto_commit=False,
                                group_id=None, max_partition_fetch_bytes=4 * 1024 * 1024)
    await consumer.start()
    got, t = 0, time.perf_counter()
    try:
        while got < len(events):
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            if not batch and time.perf_counter() - t > 30:
                break
            got += sum(len(v) for v in batch.values())
    finally:
        await consumer.stop()
    print(f"raw aiokafka consume of the same clicks (reference): {got / (time.perf_counter() - t):>9,.0f} clicks/s")
    for delivery in ("faust", "batch"):
        print(_faust_ceiling({**env, "WHARF_APP_ID": f"wharf-bench-{tag}-{delivery}", "WHARF_WEB_PORT": str(port + 1)}, len(events), delivery))

    log = state / "worker.log"
    proc = subprocess.Popen([sys.executable, "-m", "wharf.cli", "worker", "--loglevel", "warning"], cwd=ROOT, env=env,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    # The load generator's own loop: a stall here (e.g. starved of CPU on a busy machine) is counted as request
    # latency, so each round reports it beside the worker's figures.
    client_loop = LoopWatch(threshold_ms=20)
    client_loop.start(asyncio.get_running_loop())
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {env['WHARF_WEB_OPERATOR_TOKENS']}"}) as http:

            async def commerce_stats() -> dict:
                async with http.get(f"{base}/commerce/stats") as r:
                    return await r.json()

            async def learned_clicks() -> int:
                return sum(v["clicks"] for v in (await commerce_stats())["shards"].values())

            first = last = None
            deadline = time.monotonic() + 300
            learned = 0
            while time.monotonic() < deadline and learned < len(events):
                if proc.poll() is not None:
                    raise RuntimeError(f"worker exited; see {log}")
                try:
                    learned = await learned_clicks()
                except (aiohttp.ClientError, OSError, KeyError):
                    learned = 0
                if learned and first is None:
                    first = (time.perf_counter(), learned)
                last = (time.perf_counter(), learned)
                await asyncio.sleep(0.2)
            if first is None or last is None or last[1] <= first[1]:
                raise RuntimeError(f"the worker learned {learned} clicks; see {log}")
            rate = (last[1] - first[1]) / (last[0] - first[0])
            print(f"worker: clicks/s through the recommender agent (Kafka -> learn -> checkpoint -> ack): {rate:>9,.0f} "
                  f"({last[1]:,} clicks)")
            # Latency is measured on a worker that has caught up: its last checkpoint written and acked (the rounds
            # while it learns, below, measure requests beside that work).
            t_caught = time.perf_counter()
            while (await commerce_stats())["unacked"]:
                if time.perf_counter() - t_caught > 60:
                    raise RuntimeError(f"the worker did not checkpoint its clicks within 60 s; see {log}")
                await asyncio.sleep(0.05)
            print(f"worker caught up (last checkpoint written, every click acked) {time.perf_counter() - last[0]:.1f} s "
                  f"after the last click was learned")

            user_ids = list(dict.fromkeys(e["user_id"] for e in events))
            random.Random(0).shuffle(user_ids)
            latencies: list[float] = []
            sem = asyncio.Semaphore(concurrency)
            errors = 0

            async def one(user: str) -> None:
                nonlocal errors
                async with sem:
                    t0 = time.perf_counter()
                    async with http.get(f"{base}/recommendations/{user}?k=10") as r:
                        await r.read()
                        if r.status != 200:
                            errors += 1
                    latencies.append(time.perf_counter() - t0)

            async def measure(level: int, batch: list[str]) -> str:
                nonlocal sem, errors
                sem = asyncio.Semaphore(level)
                latencies.clear()
                errors = 0
                t, cpu = time.perf_counter(), _cpu_times()
                client_loop.reset()
                await asyncio.gather(*(one(u) for u in batch))
                wall = time.perf_counter() - t
                lat = np.array(latencies) * 1e3
                return (f"{len(lat):,} requests, {level} concurrent, {len(user_ids):,} distinct users: "
                        f"p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms, max {lat.max():.1f} ms, "
                        f"{len(lat) / wall:,.0f} req/s, {errors} errors{_stolen_since(cpu)}; load generator: {client_loop.summary()}")

            async def open_loop(rate: float, batch: list[str]) -> str:
                """Requests sent on a fixed schedule whatever the answers do; latency counted from the scheduled
                time, so a stall delays every request due during it (a closed loop sends none then)."""
                lat: list[float] = []
                failed = 0
                start, cpu = time.perf_counter() + 0.05, _cpu_times()
                client_loop.reset()

                async def fire(i: int, user: str) -> None:
                    nonlocal failed
                    due = start + i / rate
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                    async with http.get(f"{base}/recommendations/{user}?k=10") as r:
                        await r.read()
                        failed += r.status != 200
                    lat.append(time.perf_counter() - due)

                await asyncio.gather(*(fire(i, u) for i, u in enumerate(batch)))
                a = np.array(lat) * 1e3
                return (f"{len(a):,} requests at {rate:,.0f}/s (open loop): p50 {np.percentile(a, 50):.1f} ms, "
                        f"p99 {np.percentile(a, 99):.1f} ms, max {a.max():.1f} ms, {failed} errors{_stolen_since(cpu)}; "
                        f"load generator: {client_loop.summary()}")

            # Each round asks distinct users, after the worker's 1 s answer cache has expired: no request is a cache hit.
            from streams.learning.learner import RECS_CACHE_SECONDS

            n_req = min(requests, len(user_ids))
            if n_req < requests:
                print(f"(rounds of {n_req:,} requests: one per distinct user)")
            await asyncio.gather(*(one(u) for u in user_ids[-100:]))  # warm-up
            # The load generator's own collections (its 30,000 click dicts) would pause it for 20-60 ms and count
            # as request latency: its long-lived objects are frozen, as the worker freezes its own.
            gc.collect()
            gc.freeze()
            levels = [concurrency] * rounds + ([concurrency // 4] if concurrency >= 4 else [])
            for n_level, level in enumerate(levels):
                await asyncio.sleep(RECS_CACHE_SECONDS + 0.1)
                batch = [user_ids[(i + n_level * n_req) % len(user_ids)] for i in range(n_req)]
                which = f" (round {n_level + 1} of {rounds})" if level == concurrency and rounds > 1 else ""
                print(f"GET /recommendations k=10{which}, {await measure(level, batch)}")

            await asyncio.sleep(RECS_CACHE_SECONDS + 0.1)
            print(f"GET /recommendations k=10, {await open_loop(OPEN_LOOP_RATE, user_ids[:n_req])}")

            # The same requests while the worker learns: the clicks once more, as new records.
            await asyncio.sleep(RECS_CACHE_SECONDS + 0.1)
            await _produce_clicks(s, topic, events)
            deadline = time.monotonic() + 60
            while await learned_clicks() <= last[1]:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the worker learned none of the second pass; see {log}")
                await asyncio.sleep(0.05)

            async def while_learning(round_: Coroutine[Any, Any, str]) -> None:
                t0, n0 = time.perf_counter(), await learned_clicks()
                line = await round_
                n1 = await learned_clicks()
                print(f"GET /recommendations k=10 while the worker learns ({(n1 - n0) / (time.perf_counter() - t0):,.0f} "
                      f"clicks/s meanwhile): {line}")

            await while_learning(measure(concurrency, [user_ids[(i + 2 * n_req) % len(user_ids)] for i in range(n_req)]))
            await asyncio.sleep(RECS_CACHE_SECONDS + 0.1)
            await while_learning(open_loop(OPEN_LOOP_RATE, [user_ids[(i + 3 * n_req) % len(user_ids)] for i in range(n_req)]))
            async with http.get(f"{base}/stats") as r:
                stats = await r.json()
            gc_ = stats.get("gc") or {}
            print(f"worker garbage collector over the run: {gc_.get('collections', 0):,} collections, "
                  f"max pause {gc_.get('max_ms', 0):.0f} ms, {gc_.get('over_20ms', 0)} over 20 ms; "
                  f"records dispatched without Faust's per-record guard: {stats.get('dispatch')}")
            loop = stats.get("loop") or {}
            print(f"worker event loop: {loop.get('stalls', 0)} stalls over {loop.get('threshold_ms', 0):.0f} ms, "
                  f"longest {loop.get('max_ms', 0):.0f} ms, {loop.get('total_ms', 0):,.0f} ms in all")
            for stall in (loop.get("longest") or [])[:3]:
                top = stall["stacks"][0] if stall["stacks"] else None
                where = " <- ".join(reversed(top["stack"][-4:])) if top else "no sample: C code held the GIL"
                print(f"  {stall['ms']:,.0f} ms stall, {stall['sampled']} samples; most in {where}")
            final = await commerce_stats()
            for i, lp in sorted(final["learners"].items()):
                print(f"learner process {i}: {lp['work_s']:,.1f} s at work, {lp['answered']:,} requests answered in "
                      f"{lp['answer_s']:,.2f} s, longest step of work {lp['longest_step_ms']:.1f} ms ({lp['longest_step']}); "
                      f"collector: {lp['gc']['collections']:,} collections, max pause {lp['gc']['max_ms']:.0f} ms; "
                      f"peak memory {lp['peak_rss_mb']:,.0f} MB")
            print(f"worker process peak memory: {final['peak_rss_mb']:,.0f} MB")
    finally:
        client_loop.stop()  # waiting for the worker below blocks this loop: not a stall of the load generator
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
