"""`wharf bench sensors` (bridge and worker under a publishing load) and `wharf bench bridge` (the bridge alone)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from wharf import progress
from wharf.bench.cpu import JIT_THREADS, cpu_reading, cpu_seconds, family, run_and_wait_seconds, shares
from wharf.bench.memory import peak_rss_mb
from streams.runtime.kafka_auth import kafka_client

console = Console()


# --- bench -------------------------------------------------------------------------------------------------------


class _Worker:
    """A `wharf worker` subprocess for the bench, ready once its web server answers."""

    def __init__(self, env: dict[str, str], web_port: int, log: Path) -> None:
        import secrets
        import urllib.request

        token = secrets.token_urlsafe(24)  # this bench worker's own operator token, for its /stats
        self.request = urllib.request.Request(f"http://127.0.0.1:{web_port}/stats", headers={"Authorization": f"Bearer {token}"})
        self.proc = subprocess.Popen([sys.executable, "-m", "wharf.cli", "worker", "--loglevel", "warning"],
                                     env={**os.environ, **env, "WHARF_WEB_PORT": str(web_port), "PYTHONUNBUFFERED": "1",
                                          "WHARF_WEB_OPERATOR_TOKENS": token},
                                     stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bench worker did not start; see {log}")
            try:
                urllib.request.urlopen(self.request, timeout=2).read()
                return
            except OSError:
                time.sleep(0.5)

    def stats(self) -> dict:
        import json
        import urllib.request

        return json.loads(urllib.request.urlopen(self.request, timeout=60).read())

    def stop(self) -> None:
        import signal

        os.killpg(self.pid, signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)


WARM_SEQ = 1 << 62  # sequence numbers of the warm-up readings, far above any the timed run publishes
WARM_LOAD_SEQ = WARM_SEQ + (1 << 32)  # the load warm-up's (`--warmup-seconds`), above the first warm-up reading's
WARMUP_SECONDS = 45.0  # the load warm-up's default: docs/performance.md, "The broker's first minutes at 5,000/s"

def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def bench_sensors(
    rate: float = typer.Option(5000.0, help="Target readings/s offered by the publishers."),
    seconds: float = typer.Option(30.0, help="Publishing time."),
    model_options: str = typer.Option("", help='DeviceAnomalyModel options for the worker (JSON), e.g. \'{"use_forecaster": false}\'.'),
    publishers: int = typer.Option(3, help="Publishing devices, one MQTT connection and one device login each (missing logins are provisioned as bench-NNN devices)."),
    catch_up: int = typer.Option(0, help="Catch-up mode: this many readings of 1,000 devices pre-loaded in Kafka, then a fresh worker; no MQTT."),
    warmup_seconds: float = typer.Option(WARMUP_SECONDS, help="Seconds of the offered load before the timed run, its readings not "
                                         "counted: a broker started just before compiles its hot code meanwhile (0: none)."),
) -> None:
    """Devices -> Mosquitto -> bridge -> Kafka -> worker -> ClickHouse on this machine: rate, latencies, memory, reference rates.

    Needs `wharf infra up --services kafka,mosquitto,clickhouse`. Runs a worker and a bridge of its own
    (fresh topics and app id), so it never touches other data. With `--catch-up N`, the worker alone reads a
    backlog: its readings/s beside the detectors' own batched rate, measured in the same run. The timed run
    follows `--warmup-seconds` of the same load (printed with the CPU it took): it measures a running pipeline.
    """
    from schemas.settings import get_settings

    asyncio.run(_bench(get_settings(), rate, seconds, model_options, publishers, catch_up, warmup_seconds))


def _bench_clickhouse_base(settings) -> str:  # noqa: ANN001
    from streams.sinks.clickhouse import with_local_password

    ch_url = with_local_password(settings, settings.clickhouse_url) if settings.clickhouse_url.startswith("clickhouse://") else settings.local_clickhouse_server_url
    return ch_url.rsplit("/", 1)[0]


async def _bench(settings, rate: float, seconds: float, model_options: str, n_pub: int, catch_up: int = 0,  # noqa: ANN001
                 warmup_seconds: float = WARMUP_SECONDS) -> None:
    """One bench run on topics and a ClickHouse database of its own, removed afterwards (also after a failure)."""
    from wharf.infra import remove_bench_run

    u = uuid.uuid4().hex[:8]
    try:
        if catch_up:
            await _catch_up_run(settings, u, catch_up, model_options)
        else:
            await _bench_run(settings, u, rate, seconds, model_options, n_pub, warmup_seconds)
    finally:
        await remove_bench_run(settings, u, f"{_bench_clickhouse_base(settings)}/bench_{u}")


def loop_stalls(loop: dict) -> str:
    """The worker's event-loop stalls (`streams/runtime/loopwatch.py`) and where the longest was: every reading
    waiting behind one is that much later."""
    if not loop:
        return "(no loop watch in the stats)"
    line = (f"{loop.get('stalls', 0)} stalls over {loop.get('threshold_ms', 0):.0f} ms, {loop.get('total_ms', 0) / 1e3:.1f} s in all, "
            f"longest {loop.get('max_ms', 0):.0f} ms")
    longest = max(loop.get("longest", []), key=lambda st: st.get("ms", 0), default=None)
    if longest and longest.get("stacks"):
        line += " in " + " < ".join(reversed(longest["stacks"][0]["stack"][-3:]))
    return line


def own_topics(prefix: str) -> dict[str, str]:
    """Settings naming every topic `{prefix}.{name}`: a benchmark's worker reads nothing another run left behind."""
    from streams.runtime.topics import SPECS

    return {f"WHARF_{spec.attr.upper()}": f"{prefix}.{spec.attr[6:]}" for spec in SPECS}


def _bench_env(settings, u: str, model_options: str) -> tuple[dict[str, str], Any]:  # noqa: ANN001
    """The bench worker's environment (its own app id, topics and database) and the settings it makes."""
    from schemas.settings import Settings

    base = _bench_clickhouse_base(settings)
    env = {
        "WHARF_APP_ID": f"bench-{u}", "WHARF_CLICKHOUSE_URL": f"{base}/bench_{u}",
        "WHARF_SENSOR_ALARM_CLEAR_SECONDS": "0", "WHARF_SENSOR_CHECKPOINT_SECONDS": "30",
        "WHARF_SINK_BATCH_SECONDS": "0.25",
    }
    env |= own_topics(f"bench.{u}")  # every topic fresh: the commerce agents of the bench worker must find nothing to do
    if model_options:
        env["WHARF_SENSOR_MODEL_OPTIONS"] = model_options
    return env, Settings(**{k[6:].lower(): v for k, v in env.items()})


def _detector_rates(model_options: str, n_devices: int) -> tuple[dict[str, float], dict[str, float]]:
    """The detectors' own score+learn rates, two metrics per reading as the bench sends: per-device models batched
    (`measure_throughput`, the issue's reference) and one device bank (how the worker runs them), same readings."""
    import json as _json

    from wharf.bench.anomaly import measure_bank_throughput, measure_throughput

    opts = _json.loads(model_options) if model_options else {}
    per_device = measure_throughput(n_devices=n_devices, n_metrics=2, rounds=3, warmup_rounds=1, one_by_one_events=500, **opts)
    bank = measure_bank_throughput(n_devices=n_devices, n_metrics=2, rounds=3, warmup_rounds=1, **opts)
    return per_device, bank


async def _catch_up_run(settings, u: str, n: int, model_options: str, n_devices: int = 1000) -> None:  # noqa: ANN001
    """`n` readings of `n_devices` devices in Kafka first, then a fresh worker: how fast it catches up, both tables stored."""
    from aiokafka import AIOKafkaProducer

    from schemas import codec
    from streams.runtime.topics import topic_names
    from streams.sinks.clickhouse import connect
    from wharf.infra.kafka import ensure_topics

    env, s = _bench_env(settings, u, model_options)
    await ensure_topics(settings, topic_names(s), settings.topic_partitions)
    state = settings.state_dir / "bench" / u
    state.mkdir(parents=True, exist_ok=True)
    console.print(f"bench {u}: catch-up of {n:,} readings ({n_devices} devices) on {settings.kafka_bootstrap}, ClickHouse {env['WHARF_CLICKHOUSE_URL'].rsplit('@', 1)[-1]}; logs in {state}")
    per_device = -(-n // n_devices)
    t0 = time.time() - per_device  # one reading a second per device, the last one now
    producer = AIOKafkaProducer(**kafka_client(settings), linger_ms=20, max_batch_size=1 << 20, acks="all")
    await producer.start()
    sent = 0
    try:
        futs = []
        for k in range(per_device):
            for d in range(n_devices):
                if sent == n:
                    break
                device = f"cu-{d:04d}"
                value = codec.dumps({"site": "bench", "zone": f"z{d % 10}", "device_id": device, "device_type": "cold_room",
                                     "ts": t0 + k, "seq": k, "metrics": {"temperature": 4.0 + (k % 13) / 20 + d % 3,
                                                                         "humidity": 50.0 + (k + d) % 7}})
                futs.append(await producer.send(s.topic_sensor_readings, value, key=device.encode()))
                sent += 1
            if len(futs) >= 20_000:
                await asyncio.gather(*futs)
                futs = []
        await asyncio.gather(*futs)
    finally:
        await producer.stop()
    ch = connect(env["WHARF_CLICKHOUSE_URL"])
    started = time.time()
    worker = _Worker(env, settings.web_port + 50, state / "worker.log")
    ready = time.time()
    cpu0 = (cpu_seconds(worker.pid), cpu_seconds(worker.pid, worker.pid))
    first = None
    counts = (0, 0)
    steady: list[tuple[int, float, float, float]] = []  # (rows, time, CPU all threads, CPU main thread)
    try:
        while time.time() < ready + 900:
            counts = await asyncio.to_thread(lambda: tuple(ch.query(f"SELECT count() FROM {ch.table(t)}")[0][0]
                                                           for t in ("sensor_readings", "anomaly_scores")))
            if first is None and min(counts) > 0:
                first = time.time()
            for k, share in ((0, 0.2), (1, 0.8)):  # the steady state: between a fifth and four fifths of the rows stored
                if len(steady) == k and min(counts) >= share * n:
                    steady.append((min(counts), time.time(), cpu_seconds(worker.pid), cpu_seconds(worker.pid, worker.pid)))
            if min(counts) >= n:
                break
            await asyncio.sleep(0.25)
        done = time.time()
        cpu = (cpu_seconds(worker.pid) - cpu0[0], cpu_seconds(worker.pid, worker.pid) - cpu0[1])
        peak = peak_rss_mb(worker.pid)
        stats = worker.stats()
    finally:  # also when the worker is too busy to answer
        worker.stop()
    det, bank = _detector_rates(model_options, 100)
    rate = n / (done - ready)
    print(f"catch-up         {n:,} readings of {n_devices} devices (2 metrics each) in Kafka; stored {counts[0]:,} raw rows and {counts[1]:,} score rows")
    print(f"through worker   {rate:,.0f} readings/s from worker ready to both tables complete ({done - ready:.1f} s; "
          f"first rows after {(first or done) - ready:.1f} s; worker start {ready - started:.1f} s)")
    print(f"reference        detectors batched (measure_throughput, 2 metrics, same run): {det['batch_events_per_s']:,.0f} readings/s "
          f"({det['batch_readings_per_s']:,.0f} metric values/s)")
    print(f"reference        one device bank, as the worker scores (measure_bank_throughput, same readings): "
          f"{bank['batch_events_per_s']:,.0f} readings/s")
    print(f"ratio            worker / measure_throughput = {rate / det['batch_events_per_s']:.0%}, worker / device bank = "
          f"{rate / bank['batch_events_per_s']:.0%} (targets: >= 25,000 readings/s and >= 60 % of the detectors' rate)")
    print(f"worker CPU       {cpu[0] / n * 1e6:.0f} us a reading in all threads, {cpu[1] / n * 1e6:.0f} us in the event loop's "
          f"(main) thread: {n / cpu[1]:,.0f} readings per main-thread CPU second (steadier than readings/s on a shared machine)")
    if len(steady) == 2:
        (r0, t0_, a0, m0), (r1, t1_, a1, m1) = steady
        rows_ = max(r1 - r0, 1)
        print(f"steady state     {(a1 - a0) / rows_ * 1e6:.0f} / {(m1 - m0) / rows_ * 1e6:.0f} us a reading (all threads / event "
              f"loop) and {rows_ / max(t1_ - t0_, 1e-9):,.0f} readings/s while the rows went from {r0:,} to {r1:,} (no start-up)")
    print(f"peak RSS         worker {peak:.0f} MB")
    print("worker loop      " + loop_stalls(stats.get("loop", {})))
    gc = stats.get("gc", {})
    print(f"worker gc        {gc.get('collections', 0)} collections, {gc.get('total_ms', 0) / 1e3:.1f} s in all "
          f"({gc.get('total_ms', 0) * 1e3 / n:.1f} us a reading), longest {gc.get('max_ms', 0):.0f} ms")
    w = stats.get("writers", {})
    print("worker writers   " + "  ".join(f"{k}: {v.get('rows_stored')} rows, {v.get('insert_seconds_total', 0):.1f}s inserting"
                                         for k, v in w.items() if v.get("rows_stored")))


async def _bench_run(settings, u: str, rate: float, seconds: float, model_options: str, n_pub: int,  # noqa: ANN001, C901
                     warmup_seconds: float = WARMUP_SECONDS) -> None:
    from aiokafka import AIOKafkaConsumer

    from schemas import codec
    from streams.sinks.clickhouse import connect
    from streams.runtime.topics import topic_names
    from wharf.bench.paced import PacedPublishers
    from wharf.bench.publishers import provisioned
    from wharf.infra import services
    from wharf.infra.kafka import ensure_topics, topic_list
    from wharf.infra.sessions import end_temporary, open_temporary
    from schemas.redact import redact

    logins = contextlib.ExitStack()  # bench devices added to Mosquitto for this run, removed after it
    pubs = logins.enter_context(provisioned(settings, n_pub, "bench"))  # before the bridge starts: Mosquitto re-reads its logins
    base = _bench_clickhouse_base(settings)
    env, s = _bench_env(settings, u, model_options)
    await ensure_topics(settings, topic_names(s), settings.topic_partitions)
    # topics on the broker, printed: thousands left behind (by tests on a development stack) cost Kafka heap, GC and
    # CPU the run then waits for, and every aiokafka client a larger metadata decode
    broker_topics = len(await topic_list(settings))
    state = settings.state_dir / "bench" / u
    state.mkdir(parents=True, exist_ok=True)
    console.print(f"bench {u}: worker + bridge on {settings.kafka_bootstrap}, ClickHouse {redact(base)}/bench_{u}; logs in {state}")
    phases = progress.Phases(5 if warmup_seconds > 0 else 4, "bench sensors")
    phases.next("starting a worker and a bridge")
    worker = _Worker(env, settings.web_port + 50, state / "worker.log")
    benv = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    open_temporary(s, [f"bench-{u}"])
    bridge = subprocess.Popen([sys.executable, "-m", "wharf.cli", "bridge", "--client-id", f"bench-{u}", "--share-group", f"bench-{u}",
                               "--loglevel", "warning"], env=benv, stdout=open(state / "bridge.log", "ab"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    ch = connect(env["WHARF_CLICKHOUSE_URL"])
    alarm_lat: list[float] = []
    alarm_sent: list[float] = []
    alarm_ts: list[float] = []  # the alarms' readings' own times (their publish time), to find them in Kafka
    row_lat: list[float] = []
    probe_sent: dict[int, float] = {}
    stop = threading.Event()
    timed = [float("inf"), float("inf")]  # the timed run's start and end, once known: alarms raised before it are not counted

    async def watch_alerts() -> None:
        c = AIOKafkaConsumer(s.topic_alerts, **kafka_client(settings), auto_offset_reset="earliest")
        await c.start()
        try:
            while not stop.is_set() or time.time() < timed[1] + 10:
                for msgs in (await c.getmany(timeout_ms=200)).values():
                    now = time.time()
                    for m in msgs:
                        a = codec.loads(m.value)
                        if a["status"] == "ACTIVE_UNACK" and a["alarm_type"] == "rule:temperature" and a["start_ts"] >= timed[0]:
                            alarm_lat.append(now - a["start_ts"])
                            alarm_sent.append(m.timestamp / 1000 - a["start_ts"])  # the alert's Kafka time: the worker sent it
                            alarm_ts.append(a["start_ts"])
        finally:
            await c.stop()

    def reading(pub, seq: int, ts: float, temperature: float, humidity: float) -> bytes:  # noqa: ANN001
        return codec.dumps({"site": pub.site, "zone": pub.zone, "device_id": pub.user, "device_type": "cold_room",
                            "ts": ts, "seq": seq, "metrics": {"temperature": temperature, "humidity": humidity}})

    def line(i: int, seq: int, now: float) -> bytes:
        bad = i == 0 and seq % 200 == 0  # the probe: a too-warm cold room every 200 readings -> one alarm each
        if i == 0 and seq % 100 == 50:
            probe_sent[seq] = now
        return reading(pubs[i], seq, now, 20.0 if bad else 4.0 + (seq % 13) / 20, 50.0 + seq % 7)

    def warm_line(i: int, seq: int, now: float) -> bytes:
        """The load warm-up's readings: the timed run's, alarms included (the broker's alert traffic warms too), no
        probes, not counted."""
        bad = i == 0 and seq % 200 == 0
        return reading(pubs[i], WARM_LOAD_SEQ + seq, now, 20.0 if bad else 4.0 + (seq % 13) / 20, 50.0 + seq % 7)

    def warm_up() -> None:
        """Ordinary readings of the probe device (seq `WARM_SEQ` and up, left out of every count) through its
        publisher, every 2 s until one is stored: until the bridge has subscribed, Mosquitto has no session to
        queue them for."""
        for k in range(60):
            publishers.check()
            publishers.send(0, reading(pubs[0], WARM_SEQ + k, time.time(), 4.0, 50.0))
            deadline = time.time() + 2
            while time.time() < deadline:
                if ch.query(f"SELECT count() FROM {table} WHERE seq >= {WARM_SEQ}")[0][0]:
                    return
                time.sleep(0.1)
        raise RuntimeError("no warm-up reading was stored within 120 s: the pipeline is not working")

    # The timed run measures a running pipeline, not the worker's start: a reading first goes all the way (the bridge
    # subscribed, the worker's partitions assigned, its writer storing), as in production, where it runs already.
    table = ch.table("sensor_readings")
    def shut_down() -> None:
        worker.stop()
        bridge.terminate()
        bridge.wait(30)
        end_temporary(s, [f"bench-{u}"])  # else Mosquitto queues all later telemetry for it
        logins.close()

    warm_from = time.time()
    publishers = watcher = None
    try:
        publishers = PacedPublishers(settings, pubs, rate, line, state / "publishers.log")
        await asyncio.to_thread(publishers.wait_connected)
        await asyncio.to_thread(warm_up)
        warmed = time.time() - warm_from
        groups = {"bench process": [os.getpid()], "mosquitto_pub": publishers.pids, "worker": family(worker.pid), "bridge": family(bridge.pid)}
        servers = {name: pid for name, svc in services(settings).items() if (pid := svc.process.pid()) is not None}
        groups |= {name: family(pid) for name, pid in servers.items()}
        # the broker's JIT compiler threads: a JVM started just before spends its first minutes compiling
        threads = {"kafka's JIT compiler threads (within kafka)": (servers["kafka"], JIT_THREADS)} if "kafka" in servers else {}
        warm_cpu = []
        # the alert consumer runs from here: its first fetches made a fresh broker recompile its network code in
        # the timed run (docs/performance.md, "The broker's first minutes at 5,000/s")
        watcher = asyncio.create_task(watch_alerts())
        if warmup_seconds > 0:  # the offered load, not counted, until the broker (and the rest) run warm
            phases.next(f"warm-up: the offered load for {warmup_seconds:.0f} s, not counted")
            warm_stop = threading.Event()
            warm_feeder = threading.Thread(target=publishers.feed, args=(warm_stop, warm_line), daemon=True)
            warm_cpu.append((time.time(), cpu_reading(groups, threads)))
            warm_feeder.start()
            await asyncio.sleep(warmup_seconds)
            warm_stop.set()
            warm_feeder.join()
            warm_cpu.append((time.time(), cpu_reading(groups, threads)))
            if publishers.error is not None:
                raise RuntimeError(f"the warm-up's publishing failed: {publishers.error!r}")
            warm_published = publishers.published
            warm_stored = (await asyncio.to_thread(ch.query, f"SELECT count() FROM {table} WHERE seq >= {WARM_LOAD_SEQ}"))[0][0]
    except BaseException:
        if watcher is not None:
            watcher.cancel()
        if publishers is not None:
            with contextlib.suppress(RuntimeError):
                publishers.finish(10)  # nothing fed: each disconnects and exits
        shut_down()
        raise
    phases.next(f"publishing for {seconds:.0f} s, then waiting for the rows")
    t_start = time.time()
    t_end = t_start + seconds
    timed[:] = [t_start, t_end]
    feeder = threading.Thread(target=publishers.feed, args=(stop,), daemon=True)
    feeder.start()
    counts: list[tuple[float, int]] = []
    # One query a poll, the timed run's rows and the probe device's highest stored seq (each costs ClickHouse and
    # this process CPU that the pipeline would otherwise have).
    poll = (f"SELECT count(), maxIf(seq, device_id = '{pubs[0].user}') FROM {table} WHERE seq < {WARM_SEQ}")
    sched = [run_and_wait_seconds(worker.pid)]  # the worker's main thread: ran, waited for a CPU (timed run only)
    cpu = [(time.time(), cpu_reading(groups, threads))]  # each process's CPU over the timed run
    finished = None
    try:
        while time.time() < t_end + 60:
            if time.time() >= t_end and not stop.is_set():
                sched.append(run_and_wait_seconds(worker.pid))
                cpu.append((time.time(), cpu_reading(groups, threads)))
                stop.set()
                feeder.join()  # its last round written: `published` is final
                finished = asyncio.create_task(asyncio.to_thread(publishers.finish))  # their last PUBACKs
            n, top = (await asyncio.to_thread(ch.query, poll))[0]  # top: 0 before the first probe row (probes are seq 50, 150, ...)
            now = time.time()
            counts.append((now, n))
            for q in [q for q in list(probe_sent) if q <= top]:  # list(): the feeder adds to it meanwhile
                row_lat.append(now - probe_sent.pop(q))
            if stop.is_set() and n >= publishers.published:
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        if finished is None:
            feeder.join()
            finished = asyncio.create_task(asyncio.to_thread(publishers.finish))
        try:
            await finished
        except RuntimeError as exc:  # after the figures are gathered: printed, not hidden
            console.print(f"[red]{exc}[/red]")
        await asyncio.sleep(1)
        watcher.cancel()
        peak_worker = peak_rss_mb(worker.pid)
        peak_bridge = peak_rss_mb(bridge.pid)
        try:
            stats = worker.stats()
        finally:  # a worker too busy to answer is stopped all the same
            shut_down()
    # sustained rate: rows/s over the middle of the run (after warm-up)
    mid = [(t, n) for t, n in counts if t_start + 0.2 * seconds <= t <= t_end]
    sustained = (mid[-1][1] - mid[0][1]) / (mid[-1][0] - mid[0][0]) if len(mid) >= 2 and mid[-1][0] > mid[0][0] else float("nan")
    total = counts[-1][1] if counts else 0
    drain = counts[-1][0] - t_end if counts else float("nan")
    phases.next("reference: raw aiokafka consume rate")
    # reference 1: raw aiokafka consume rate of the same messages
    c = AIOKafkaConsumer(s.topic_sensor_readings, **kafka_client(settings), auto_offset_reset="earliest",
                         enable_auto_commit=False, max_partition_fetch_bytes=4 << 20)
    await c.start()
    got, t0 = 0, time.time()
    try:
        while got < total:
            batch = await c.getmany(timeout_ms=1000, max_records=10000)
            if not batch:
                break
            got += sum(len(v) for v in batch.values())
    finally:
        await c.stop()
    raw_rate = got / (time.time() - t0)
    bridged = await _bridged_at(settings, s.topic_sensor_readings, pubs[0].user, set(alarm_ts))
    phases.next("reference: the detectors' score+learn rate")
    # reference 2: the detectors' own score+learn rates
    try:
        m, b = _detector_rates(model_options, 100)
        det = " ".join(f"{k}={v:,.0f}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items())
        bank = f"batch_events_per_s={b['batch_events_per_s']:,.0f} batch_readings_per_s={b['batch_readings_per_s']:,.0f}"
    except Exception as exc:  # noqa: BLE001 - report what we have
        det = bank = f"(the detectors' rates failed: {exc})"
    print(f"offered          {publishers.published / seconds:,.0f} readings/s for {seconds:.0f}s ({publishers.published} readings, {len(pubs)} "
          "publishers: mosquitto_pub, QoS 1, "
          f"model options {model_options or 'default'})")
    print(f"warm-up          a reading end to end {warmed:.1f} s after the worker answered, before the timed run (not counted)")
    if len(warm_cpu) == 2:
        (t0, before), (t1, after) = warm_cpu
        print(f"warm-up load     then the offered load for {t1 - t0:.0f} s before the timed run (--warmup-seconds; alarms and the alert "
              f"consumer too): {warm_published:,} readings, not counted ({warm_stored:,} of them stored when the timed run began)")
        print(f"warm-up CPU      of one core over the warm-up load: {shares(before, after, t1 - t0)}")
    else:
        print("warm-up load     none (--warmup-seconds 0): a broker started just before compiles its hot code in the timed run")
    print(f"stored           {total} rows in sensor_readings (the timed run's); sustained {sustained:,.0f} readings/s (Mosquitto -> bridge -> Kafka -> worker -> ClickHouse); "
          f"drained {drain:.1f}s after publishing stopped")
    print(f"publish->row     p50 {_pct(row_lat, .5) * 1000:.0f} ms  p95 {_pct(row_lat, .95) * 1000:.0f} ms  p99 {_pct(row_lat, .99) * 1000:.0f} ms "
          f"({len(row_lat)} probes, 100 ms poll resolution)")
    print(f"publish->alarm   p50 {_pct(alarm_lat, .5) * 1000:.0f} ms  p95 {_pct(alarm_lat, .95) * 1000:.0f} ms  p99 {_pct(alarm_lat, .99) * 1000:.0f} ms "
          f"({len(alarm_lat)} alarms on the alerts topic)")
    print(f"  of which       publish->alert sent by the worker p50 {_pct(alarm_sent, .5) * 1000:.0f} ms  p99 {_pct(alarm_sent, .99) * 1000:.0f} ms "
          "(the alert's Kafka timestamp; the rest is Kafka to the bench's consumer)")
    if bridged:
        print(f"  of which       publish->reading appended by the bridge p50 {_pct(bridged, .5) * 1000:.0f} ms  p99 "
              f"{_pct(bridged, .99) * 1000:.0f} ms (the alarming readings' Kafka timestamps; the rest is Kafka -> worker -> alert)")
    print(f"peak RSS         worker {peak_worker:.0f} MB, bridge {peak_bridge:.0f} MB")
    print(f"reference        raw aiokafka consume {raw_rate:,.0f} msgs/s of the same topic")
    print(f"reference        detectors score+learn (measure_throughput): {det}")
    print(f"reference        detectors as the worker runs them, one device bank (measure_bank_throughput): {bank}")
    print("worker loop      " + loop_stalls(stats.get("loop", {})))
    if len(sched) == 2:
        ran, waited = (b - a for a, b in zip(*sched, strict=True))
        span = t_end - t_start
        print(f"worker CPU       main thread ran {ran / span:.0%} of the publishing time and waited {waited / span:.0%} for a CPU "
              "(runnable, not running: the machine's share, /proc schedstat)")
    if len(cpu) == 2:
        (t0, before), (t1, after) = cpu
        load = sum(after[k] - before[k] for k in ("bench process", "mosquitto_pub")) / (t1 - t0)
        print(f"load generator   CPU {load:.0%} of a core over the publishing time: the bench process (publisher feed, polls, "
              "alert consumer) and its mosquitto_pub publishers")
        print(f"CPU              of one core over the publishing time: {shares(before, after, t1 - t0)} (/proc; the broker held "
              f"{broker_topics:,} topics as the run began)")
    w = stats.get("writers", {})
    print("worker writers   " + "  ".join(f"{k}: {v.get('rows_stored')} rows, {v.get('insert_seconds_total', 0):.1f}s inserting" for k, v in w.items() if v.get("rows_stored")))


async def _bridged_at(settings: Any, topic: str, device: str, starts: set[float]) -> list[float]:
    """Publish -> the bridge's append to its Kafka batch (the record's CreateTime) of the readings that raised the
    counted alarms: splits the alarm latency into the MQTT side and the Kafka -> worker side. A scan of the topic
    after the run, so the timed run pays nothing for it."""
    from aiokafka import AIOKafkaConsumer

    from schemas import codec

    key = device.encode()
    out: list[float] = []
    c = AIOKafkaConsumer(topic, **kafka_client(settings), auto_offset_reset="earliest", enable_auto_commit=False)
    await c.start()
    try:
        while starts:
            batch = await c.getmany(timeout_ms=1000, max_records=10000)
            if not batch:
                break
            for msgs in batch.values():
                for m in msgs:
                    if m.key == key and (ts := codec.loads(m.value).get("ts")) in starts:
                        starts.discard(ts)
                        out.append(m.timestamp / 1000 - ts)
    finally:
        await c.stop()
    return out


def bench_bridge_alone(
    messages: int = typer.Option(100_000, help="Messages to push through, shared by the publishers."),
    publishers: int = typer.Option(8, help="mosquitto_pub processes, one device login each: the configured devices, then bench "
                                   "devices added to the local Mosquitto for the run."),
    processes: int = typer.Option(1, help="`wharf bridge` processes in the shared subscription."),
) -> None:
    """The MQTT -> Kafka bridge alone: its rate beside Mosquitto's intake in the same run, and their ratio."""
    import asyncio as _asyncio

    from wharf.bench.bridge import bench_bridge
    from schemas.settings import get_settings

    print(_asyncio.run(bench_bridge(get_settings(), messages, publishers, processes)))
