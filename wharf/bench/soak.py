"""`wharf bench soak`: the demo's load for an hour (or `--minutes`), with each process's RSS over time.

Long runs must stay flat: a worker whose memory grows a few MB a minute is out of memory after days. This
runs what `wharf demo` drives (the warehouse's authenticated MQTT devices with injected faults → Mosquitto
→ bridge → Kafka → worker, and the shop's clicks and reviews straight to Kafka), on topics, an app id and a
ClickHouse database of its own, and samples the resident memory of the worker, each learner process, the
bridge and Mosquitto every `--every` seconds. At the end it prints each process's growth per hour after
the warm-up (least-squares slope over the samples after it, relative to the RSS when it ended) beside the
target, < 5 % per hour. Afterwards it removes its topics and database and ends its bridge's persistent MQTT
session (else Mosquitto would queue all later telemetry for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import typer

from schemas.settings import Settings
from wharf.bench.memory import rss_mb

TARGET_PCT_PER_HOUR = 5.0


def learner_pids(worker_pid: int) -> list[int]:
    """The worker's learner processes: its multiprocessing spawn children (not the resource tracker)."""
    out = []
    for task in Path(f"/proc/{worker_pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            try:
                if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                    out.append(child)
            except OSError:
                continue
    return sorted(out)


def free_port() -> int:
    """A port nothing listens on now: the soak's worker beside a demo's, or another soak's."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Series:
    """One process's RSS samples: (seconds since start, MB)."""

    name: str
    samples: list[tuple[float, float]] = field(default_factory=list)

    def growth(self, warmup: float) -> tuple[float, float, float] | None:
        """(RSS when warm-up ended, MB/hour, %/hour) from the least-squares slope of the samples after warm-up."""
        after = [(t, mb) for t, mb in self.samples if t >= warmup]
        if len(after) < 3:
            return None
        n = len(after)
        mt = sum(t for t, _ in after) / n
        mm = sum(mb for _, mb in after) / n
        var = sum((t - mt) ** 2 for t, _ in after)
        if var <= 0:
            return None
        slope = sum((t - mt) * (mb - mm) for t, mb in after) / var * 3600  # MB/hour
        base = after[0][1]
        return base, slope, 100 * slope / base


def growth_table(series: list[Series], warmup: float, end: float) -> str:
    """Per process: RSS at start, end of warm-up, end; growth per hour after warm-up beside the target."""
    lines = [f"{'process':<12} {'start MB':>9} {'warm MB':>8} {'end MB':>8} {'MB/hour':>9} {'%/hour':>8}  target < {TARGET_PCT_PER_HOUR:.0f} %/hour"]
    for s in series:
        if not s.samples:
            continue
        g = s.growth(warmup)
        if g is None:
            lines.append(f"{s.name:<12} {s.samples[0][1]:>9.0f} {'-':>8} {s.samples[-1][1]:>8.0f} {'-':>9} {'-':>8}  (too few samples after warm-up)")
            continue
        base, slope, pct = g
        verdict = "met" if pct < TARGET_PCT_PER_HOUR else "MISSED"
        lines.append(f"{s.name:<12} {s.samples[0][1]:>9.0f} {base:>8.0f} {s.samples[-1][1]:>8.0f} {slope:>+9.1f} {pct:>+7.1f}%  {verdict}")
    lines.append(f"(growth: least-squares slope of the samples from {warmup / 60:.0f} to {end / 60:.0f} min, relative to the RSS at {warmup / 60:.0f} min)")
    return "\n".join(lines)


def soak_env(u: str, clickhouse_url: str) -> dict[str, str]:
    """The soak's worker and bridge settings: its own app id, topics and database, the demo's alarm and snapshot pace."""
    from wharf.bench.sensors import own_topics

    env = {"WHARF_APP_ID": f"soak-{u}", "WHARF_CLICKHOUSE_URL": clickhouse_url,
           "WHARF_SENSOR_ALARM_CLEAR_SECONDS": "20", "WHARF_COMMERCE_SNAPSHOT_SECONDS": "15", "OPENBLAS_NUM_THREADS": "1"}
    env |= own_topics(f"soak.{u}")
    return env


def bench_soak(
    minutes: float = typer.Option(60.0, help="How long to run the demo's load."),
    every: float = typer.Option(60.0, help="Seconds between RSS samples (one printed line each)."),
    warmup: float = typer.Option(10.0, help="Minutes of warm-up left out of the growth figure."),
    shop_rate: float = typer.Option(20.0, help="Shop events (clicks and reviews) per second, as in `wharf demo`."),
    devices: str = typer.Option("soak-", help="Prefix of the simulated devices' ids: two runs at once need different ones (MQTT logs out a second login)."),
    clickhouse: str = typer.Option("auto", help="`chdb` (embedded in the worker), `server` (the local ClickHouse server), or `auto`: as the settings say, like `wharf demo`."),
) -> None:
    """The demo's load for `--minutes`: RSS of the worker, each learner, the bridge and Mosquitto over time, and growth per hour.

    Needs `wharf infra up --services kafka,mosquitto,clickhouse`. Runs a worker and a bridge of its own (fresh
    topics, app id and database, removed afterwards; its bridge's MQTT session is ended).
    """
    from schemas.settings import get_settings

    if clickhouse not in ("auto", "chdb", "server"):
        raise typer.BadParameter(f"--clickhouse {clickhouse!r}: choose auto, chdb or server")
    code = asyncio.run(run_soak(get_settings(), minutes * 60, every, warmup * 60, shop_rate, clickhouse, devices))
    raise typer.Exit(code)


async def run_soak(settings: Settings, seconds: float, every: float, warmup: float, shop_rate: float, clickhouse: str = "auto",
                   devices: str = "soak-") -> int:
    import shutil

    from wharf.bench.sensors import _bench_clickhouse_base
    from wharf.infra import remove_bench_run

    u = uuid.uuid4().hex[:8]
    state = settings.state_dir.resolve() / "bench" / f"soak-{u}"
    state.mkdir(parents=True, exist_ok=True)
    server = clickhouse == "server" or (clickhouse == "auto" and settings.clickhouse_url.startswith("clickhouse://"))
    url = f"{_bench_clickhouse_base(settings)}/bench_{u}" if server else f"chdb://{state}/chdb"
    try:
        return await _soak(settings, u, url, state, seconds, every, warmup, shop_rate, devices)
    finally:
        await remove_bench_run(settings, u, url if server else None)
        shutil.rmtree(state / "chdb", ignore_errors=True)
        for datadir in (settings.state_dir / "faust").glob(f"soak-{u}-*"):  # the worker's RocksDB tables
            shutil.rmtree(datadir, ignore_errors=True)


async def _soak(settings: Settings, u: str, url: str, state: Path, seconds: float, every: float, warmup: float, shop_rate: float,  # noqa: C901
                devices: str) -> int:
    import os
    import subprocess
    import sys

    from wharf.infra.sessions import end_temporary, open_temporary
    from schemas.redact import redact
    from schemas.secrets import parse_registry, register_devices
    from streams.runtime.topics import worker_topic_names
    from wharf import infra
    from wharf.bench.sensors import _Worker
    from wharf.demo import SIMULATORS_STOP_SECONDS, ShopFeeder, stop_children, Child
    from wharf.infra.kafka import ensure_topics
    from wharf.infra.mosquitto import Mosquitto
    from wharf.simulator.devices import DeviceFleet
    from wharf.simulator.warehouse import WarehouseConfig, WarehouseSimulator

    down = [st.name for st in infra.status(settings) if st.name in ("kafka", "mosquitto", "clickhouse") and not st.running]
    if url.startswith("chdb:"):
        down = [name for name in down if name != "clickhouse"]
    if down:
        print(f"not running: {', '.join(down)}; start them with `wharf infra up --services kafka,mosquitto,clickhouse`")
        return 2
    env = soak_env(u, url)
    s = settings.model_copy(update={k[6:].lower(): v for k, v in env.items() if k.startswith(("WHARF_TOPIC_", "WHARF_APP_ID", "WHARF_CLICKHOUSE_URL"))})
    await ensure_topics(settings, worker_topic_names(s), settings.topic_partitions)
    warehouse = WarehouseSimulator(WarehouseConfig(seed=7, interval_s=1.0, start_ts=time.time(), fault_every_s=90.0,
                                                   first_fault_after_s=60.0, fault_duration_s=40.0, device_prefix=devices))
    register_devices(settings, parse_registry(warehouse.registry_setting(), "soak"))  # as `wharf demo`: passwords and ACL ...
    infra.up(settings, ["mosquitto"])  # ... written, and the running broker re-reads them
    print(f"soak {u}: {seconds / 60:.0f} min of the demo's load ({len(warehouse.devices)} devices at 1 reading/s, {shop_rate:.0f} shop events/s); "
          f"worker + bridge on {settings.kafka_bootstrap}, ClickHouse {redact(url)}; logs in {state}", flush=True)
    worker = _Worker(env, free_port(), state / "worker.log")
    client_id = f"soak-{u}"
    open_temporary(s, [client_id])
    bridge = subprocess.Popen([sys.executable, "-m", "wharf.cli", "bridge", "--client-id", client_id, "--share-group", client_id, "--loglevel", "warning"],
                              env={**os.environ, **env, "PYTHONUNBUFFERED": "1"}, stdout=open(state / "bridge.log", "ab"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    children = [Child("bridge", bridge, state / "bridge.log")]
    fleet = DeviceFleet(s, warehouse, truth_file=state / "faults.jsonl")
    stop = asyncio.Event()  # Ctrl-C or SIGTERM: the table so far, then the same clean-up as at the end
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    shop_task: asyncio.Task | None = None
    fleet_thread: threading.Thread | None = None
    broker = Mosquitto(settings).process.pid()
    series: dict[str, Series] = {}
    t0 = time.monotonic()
    try:
        await asyncio.sleep(3)  # the bridge subscribes before the devices publish
        await asyncio.to_thread(fleet.connect)
        fleet_thread = threading.Thread(target=fleet.run, name="device-fleet", daemon=True)
        fleet_thread.start()
        shop = ShopFeeder(s, shop_rate, seed=7)
        shop_task = asyncio.create_task(shop.run(stop))
        t0 = time.monotonic()
        last_tables: dict[str, int] = {}
        learner_names: dict[int, str] = {}
        header: list[str] = []
        tick = 0
        while True:
            now = time.monotonic() - t0
            pids = {"worker": worker.pid, "bridge": bridge.pid, **({"mosquitto": broker} if broker else {})}
            for pid in learner_pids(worker.pid):
                learner_names.setdefault(pid, f"learner-{len(learner_names) + 1}")
                pids[learner_names[pid]] = pid
            row = {}
            for name, pid in pids.items():
                mb = rss_mb(pid)
                if mb is not None:
                    series.setdefault(name, Series(name)).samples.append((now, mb))
                    row[name] = mb
            try:
                tables = (await asyncio.to_thread(worker.stats)).get("tables", {})
            except (OSError, ValueError):
                tables = {}
            stored = {k: tables[k] for k in ("sensor_readings", "clicks", "reviews") if isinstance(tables.get(k), int)}
            rates = "  ".join(f"{k} +{v - last_tables.get(k, 0)}" for k, v in stored.items()) or "(the worker's /stats did not answer)"
            last_tables = stored or last_tables
            if list(series) != header:  # a learner started (or restarted): name the columns again
                header = list(series)
                print(f"{'min':>5}  " + "  ".join(f"{n:>10}" for n in header) + "   (RSS MB; rows stored since the last line)", flush=True)
            print(f"{now / 60:>5.1f}  " + "  ".join(f"{row.get(n, float('nan')):>10.0f}" for n in header) + f"   {rates}", flush=True)
            if worker.proc.poll() is not None or bridge.poll() is not None:
                print(f"a process exited early (worker {worker.proc.returncode}, bridge {bridge.returncode}); see {state}")
                return 1
            if now >= seconds or stop.is_set():
                break
            tick += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, t0 + min(tick * every, seconds) - time.monotonic()))
    finally:
        stop.set()
        fleet.stop()
        if shop_task is not None:
            try:
                await asyncio.wait_for(shop_task, SIMULATORS_STOP_SECONDS)
            except (TimeoutError, asyncio.CancelledError):
                pass
        if fleet_thread is not None:
            fleet_thread.join(SIMULATORS_STOP_SECONDS)
        with contextlib.suppress(ProcessLookupError):  # gone already (it exited early)
            worker.stop()
        stop_children(children)
        fleet.close()
        await asyncio.to_thread(end_temporary, s, [client_id])  # else Mosquitto queues all later telemetry for it
    end = time.monotonic() - t0
    print()
    print(growth_table(list(series.values()), warmup, end))
    return 0
