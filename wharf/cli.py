"""`wharf`: the one command line. Subcommands are thin: they parse, call a module, print."""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback

# One core per Wharf process (workers scale out as processes): OpenBLAS's own threads only contend with
# Kafka, ClickHouse and the other workers. Read when NumPy loads, so set before anything imports it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from wharf import progress
from schemas.redact import install_log_redaction, redact
from schemas.settings import Settings, describe, get_settings

app = typer.Typer(
    name="wharf",
    help="Wharf: warehouse telemetry and shop events, MQTT -> Kafka -> Faust online models -> ClickHouse.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
infra_app = typer.Typer(help="Start, stop and inspect the local Kafka, Mosquitto and ClickHouse servers.", no_args_is_help=True)
app.add_typer(infra_app, name="infra")
evaluate_app = typer.Typer(help="Prequential (test-then-train) evaluation of the online models on real data.", no_args_is_help=True)
app.add_typer(evaluate_app, name="evaluate")
console = Console()


def _settings() -> Settings:
    try:
        return get_settings()
    except Exception as exc:  # pydantic's message already names the variable and the reason
        console.print(f"[red]invalid settings:[/red] {redact(exc)}")
        raise typer.Exit(2) from None


@infra_app.command("up")
def infra_up(
    services: str = typer.Option("", help="Comma-separated subset of kafka,mosquitto,clickhouse. Default: kafka and mosquitto, plus the ClickHouse server when WHARF_CLICKHOUSE_URL points at it."),
) -> None:
    """Start the servers (idempotent) and wait until each one answers."""
    from wharf import infra

    settings = _settings()
    names = [s.strip() for s in services.split(",") if s.strip()] or None
    started = time.monotonic()
    try:
        statuses = infra.up(settings, names)
    except infra.ServiceError as exc:
        console.print(f"[red]infra up failed:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    for st in statuses:
        took = "already running" if not st.ready_seconds else f"ready in {st.ready_seconds:.1f}s"
        console.print(f"[green]✓[/green] {st.name:<10} pid {st.pid:<7} {took:<18} {st.where}", soft_wrap=True)
    console.print(f"stack ready in {time.monotonic() - started:.1f}s; state in {settings.state_dir}")
    from schemas.secrets import secrets_dir

    console.print(f"secrets (0600, never printed) in {secrets_dir(settings)}: mqtt-bridge-password, mqtt-devices, clickhouse-password, "
                  f"api-keys, operator-token, kafka-password, kafka-admin-password; MQTT CA {settings.ca_file()}", soft_wrap=True)


@infra_app.command("down")
def infra_down(services: str = typer.Option("", help="Comma-separated subset; default all.")) -> None:
    """Stop the servers cleanly (SIGTERM, then SIGKILL after a timeout). Data stays in the state folder."""
    from wharf import infra

    names = [s.strip() for s in services.split(",") if s.strip()] or None
    stopped = infra.down(_settings(), names)
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@infra_app.command("status")
def infra_status() -> None:
    """What runs where; exit code 1 if a started service is down."""
    from wharf import infra

    settings = _settings()
    console.print(f"state folder: {settings.state_dir}")
    for st in infra.status(settings):
        state = "[green]running[/green]" if st.running else "[dim]stopped[/dim]"
        console.print(f"{st.name:<10} {state:<24} pid {str(st.pid or '-'):<7} {st.where}\n{'':<11}log {st.log}", soft_wrap=True)
    console.print(f"ClickHouse used by Wharf: {redact(settings.clickhouse_url)}", soft_wrap=True)


@app.command("worker")
def worker(
    web_port: int = typer.Option(0, help="Web server port of this worker (default WHARF_WEB_PORT). Give each worker on one machine its own."),
    loglevel: str = typer.Option("info", help="Log level."),
) -> None:
    """Run a Faust worker: all agents, the web endpoints, the ClickHouse writers. Start more to scale out."""
    import os

    if web_port:
        os.environ["WHARF_WEB_PORT"] = str(web_port)
        get_settings.cache_clear()
    use_event_loop()
    from streams.runtime import heap

    install_log_redaction()
    heap.configure(young=heap.WORKER_YOUNG)  # before the imports below allocate most of what the worker starts with
    from streams.runtime.patches import UnsupportedFaust

    try:
        import agents  # noqa: F401 - registers the agents (and creates the app, which checks Faust's version)
    except UnsupportedFaust as exc:
        console.print(f"[red]wharf worker refused to start:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    import streams.web.views  # noqa: F401 - registers the web views
    from streams.runtime.app import app as faust_app
    from streams.runtime.app import storage

    storage.ch  # connect and migrate before consuming, so a bad URL fails here, loudly
    _create_worker_topics(get_settings(), faust_app.tables.values())
    heap.freeze()  # the imported modules' objects (about 100,000): full collections walked them before the first timer
    run_faust_worker(faust_app, loglevel)


def use_event_loop() -> None:
    """Install the configured event loop policy (`WHARF_EVENT_LOOP`): before Faust or aiokafka create a loop."""
    if get_settings().event_loop == "uvloop":
        import mode.loop

        mode.loop.use("uvloop")


def run_faust_worker(faust_app: Any, loglevel: str) -> None:
    """Run a Faust app's worker in this process until it stops."""
    from faust import Worker

    faust_app.conf.datadir.parent.mkdir(parents=True, exist_ok=True)
    worker = Worker(faust_app, loglevel=loglevel)
    # Faust's terminal spinner sets the root logger to DEBUG so that it turns on every record; every
    # debug call in Faust and aiokafka then builds a LogRecord (6% of a busy worker's time, measured).
    worker.spinner = None
    code = 0
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:  # mode's `exiting` turns an agent's crash into SystemExit(1); anything else lands here
        traceback.print_exc()
        code = 1
    # Faust has stopped every service by now (agents, commits, changelog producer, ClickHouse writers). What is
    # left is the process's own exit, where the native libraries' teardown (chdb's embedded server, RocksDB) crashed
    # (SIGSEGV) in 10 of 12 runs after an agent failed and hung in the others, past the point where any Python
    # timer runs (tests/test_fail_fast.py waited 120 s). Data is already where it belongs: exit now.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _create_worker_topics(settings: Settings, tables: Iterable[Any]) -> None:
    """Create the worker's topics, its tables' changelogs and Faust's leader topic before Faust subscribes
    (`streams.runtime.topics.worker_topic_names`, `faust_topics`), in a thread: the main thread's event loop is
    Faust's to create."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from streams.runtime.topics import faust_topics, worker_topic_names
    from wharf.infra.kafka import ensure_topics

    by_partitions = faust_topics(settings, tables)  # {partitions: {name: config}}; the worker's own have no config
    by_partitions.setdefault(settings.topic_partitions, {}).update({name: {} for name in worker_topic_names(settings)})

    async def create() -> None:  # one admin client a partition count
        for partitions, configs in by_partitions.items():
            await ensure_topics(settings, list(configs), partitions, configs)

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, create()).result()


@app.command("bridge")
def bridge(
    client_id: str = typer.Option("wharf-bridge-1", help="Stable MQTT client id: the persistent session Mosquitto keeps while this bridge is away. "
                                  "With several processes, the others are `<id>-2`, `<id>-3`, ..."),
    share_group: str = typer.Option("wharf-bridge", help="Shared-subscription group: bridges in one group split the messages. Empty: no sharing."),
    processes: int = typer.Option(0, help="Bridge processes in the shared group, one core each (0: WHARF_BRIDGE_PROCESSES)."),
    end_session: bool = typer.Option(False, "--end-session", help="End the persistent session of --client-id (its queue is dropped) and exit: "
                                     "for a bridge id that will not come back."),
    loglevel: str = typer.Option("info", help="Log level."),
) -> None:
    """Run the MQTT -> Kafka bridge: acks each message to Mosquitto only after Kafka confirmed it."""
    import asyncio
    import logging

    logging.basicConfig(level=loglevel.upper(), format="[%(asctime)s] [%(levelname)s] %(name)s: %(message)s")
    install_log_redaction()
    settings = _settings()
    if end_session:
        from mqtt_bridge.connection import end_session as end

        ok = end(settings, client_id)
        console.print(f"session {client_id}: " + ("ended" if ok else "[red]the broker refused the connection[/red]"))
        raise typer.Exit(0 if ok else 1)
    n = processes or settings.bridge_processes
    if n > 1:
        from mqtt_bridge.processes import run_processes

        raise typer.Exit(run_processes(client_id, share_group or None, n, loglevel, settings.bridge_metrics_port))
    from mqtt_bridge.bridge import run_bridge

    use_event_loop()
    stats = asyncio.run(run_bridge(settings, client_id, share_group or None))
    console.print(stats.line())


@app.command("simulate")
def simulate(
    duration: float = typer.Option(0, help="Seconds of wall time to run (0: until Ctrl-C)."),
    seed: int = typer.Option(7, help="Same seed, same warehouse and same fault schedule."),
    sites: int = typer.Option(2, help="Sites."),
    zones: int = typer.Option(2, help="Zones per site."),
    devices: int = typer.Option(4, help="Devices per zone (cold rooms, conveyors, forklifts, dock doors in turn)."),
    interval: float = typer.Option(1.0, help="Seconds between a device's readings."),
    speed: float = typer.Option(1.0, help="Simulated seconds per wall second."),
    fault_every: float = typer.Option(120.0, help="Mean seconds (simulated) between injected faults; 0 for none."),
    truth: Path = typer.Option(None, help="Append the injected faults (ground truth) to this JSON-lines file."),
    register: bool = typer.Option(False, help="Add these devices (with their sites and zones) to the registry STATE_DIR/devices, and exit; "
                                  "`wharf infra up` then gives them passwords and ACL entries."),
) -> None:
    """A warehouse of authenticated MQTT devices publishing telemetry in real time, with injected faults; works against any deployment."""
    import signal as _signal

    from wharf.simulator.devices import DeviceFleet
    from wharf.simulator.warehouse import WarehouseConfig, WarehouseSimulator

    cfg = WarehouseConfig(seed=seed, sites=sites, zones_per_site=zones, devices_per_zone=devices, interval_s=interval,
                          start_ts=time.time(), fault_every_s=fault_every)
    sim = WarehouseSimulator(cfg)
    if register:
        from schemas.secrets import parse_registry, register_devices

        path = register_devices(_settings(), parse_registry(sim.registry_setting(), "simulator"))
        console.print(f"{len(sim.devices)} devices registered in {path}; now run `wharf infra up`.")
        return
    fleet = DeviceFleet(_settings(), sim, speed=speed, truth_file=truth)
    try:
        fleet.connect()
    except ConnectionError as exc:
        console.print(f"[red]{exc}[/red]\nThe local Mosquitto accepts registered devices: run `wharf simulate --register` "
                      "(same options), then `wharf infra up`.", soft_wrap=True)
        raise typer.Exit(1) from None
    _signal.signal(_signal.SIGINT, lambda *_: fleet.stop())
    _signal.signal(_signal.SIGTERM, lambda *_: fleet.stop())
    console.print(f"{len(sim.devices)} devices publishing to {_settings().mqtt_host}:{_settings().mqtt_port}; Ctrl-C stops.")
    stats = fleet.run(duration or None)
    fleet.close()
    console.print(f"published {dict(stats.published)}; faults started: {stats.faults_started}")


@app.command("demo")
def demo(
    duration: float = typer.Option(0, help="Stop by itself after this many seconds (0: run until Ctrl-C)."),
    speed: float = typer.Option(1.0, help="Simulated seconds per wall second for the warehouse."),
    interval: float = typer.Option(1.0, help="Seconds between a device's readings."),
    shop_rate: float = typer.Option(20.0, help="Shop clicks per second."),
    fault_every: float = typer.Option(90.0, help="Mean seconds between injected warehouse faults."),
    seed: int = typer.Option(7, help="Seed of both simulators."),
) -> None:
    """The main job: servers, worker, bridge, warehouse and shop simulators, and the live dashboard."""
    from wharf import demo as demo_mod

    settings = _settings()
    options = demo_mod.DemoOptions(duration=duration or None, speed=speed, interval=interval, shop_rate=shop_rate,
                                   fault_every=fault_every, seed=seed)
    try:
        code = demo_mod.run(settings, options, console)
    except infra_error() as exc:
        console.print(f"[red]demo failed:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


def infra_error() -> type[Exception]:
    from wharf.infra import ServiceError

    return ServiceError


@evaluate_app.command("anomaly")
def evaluate_anomaly(
    nab: Path = typer.Option(..., "--nab", help="NAB root (with data/ and labels/) or its data/ folder."),
    labels: Path = typer.Option(None, help="Anomaly windows JSON (default: NAB/labels/combined_windows.json)."),
    profiles: Path = typer.Option(None, help="Scoring profiles JSON (default: NAB/labels/profiles.json, else NAB's published weights)."),
    out: Path = typer.Option(None, help="Write NAB-style result CSVs (timestamp,anomaly_score) under this folder."),
    detector: str = typer.Option("wharf", help="wharf (the production ensemble) or windowedGaussian (NAB's baseline)."),
    score_only: Path = typer.Option(None, help="Only score existing result CSVs in this folder."),
    loco: bool = typer.Option(True, help="Also the leave-one-category-out table (threshold chosen without the held-out category), "
                                         "beside the windowed Gaussian's."),
    baseline_out: Path = typer.Option(None, help="Windowed-Gaussian result CSVs to reuse for that table (else it is run; "
                                                 "--detector windowedGaussian --out DIR writes them)."),
) -> None:
    """Run the exact detector code of the sensor path over NAB files and score it the NAB way (three profiles, one corpus-wide threshold)."""
    from online_models.evaluation import nab as nab_eval

    data = nab / "data" if (nab / "data").is_dir() else nab
    labels = labels or data.parent / "labels" / "combined_windows.json"
    profiles = profiles or data.parent / "labels" / "profiles.json"
    for path, what in ((data, "--nab"), (labels, "--labels")):
        if not path.exists():
            console.print(f"[red]{what}: {path} does not exist[/red]")
            raise typer.Exit(2)
    profile_file = profiles if profiles.is_file() else None
    started = time.monotonic()
    if score_only:
        report = nab_eval.score_results(score_only, labels, profile_file, data)
    else:
        factories = {"wharf": nab_eval.DeviceModelDetector, "windowedGaussian": nab_eval.WindowedGaussianDetector}
        if detector not in factories:
            console.print(f"[red]--detector: choose one of {sorted(factories)}[/red]")
            raise typer.Exit(2)
        with progress.bar(f"NAB files ({detector})") as report_progress:
            report = nab_eval.evaluate(data, labels, profile_file, out, factories[detector], detector, progress=report_progress)
    base = None
    if loco:
        if report.detector == "windowedGaussian":
            base = report
        elif baseline_out is not None:
            base = nab_eval.score_results(baseline_out, labels, profile_file, data)
        else:
            base = nab_eval.evaluate(data, labels, profile_file, None, nab_eval.WindowedGaussianDetector, "windowedGaussian",
                                     files=report.files)
        if base.files != report.files:
            console.print(f"[red]--baseline-out: its files differ from the scored ones ({len(base.files)} vs {len(report.files)})[/red]")
            raise typer.Exit(2)
    same = base is None or base is report
    print(nab_eval.format_report(report, None if same else base))
    if base is not None:
        print()
        print(nab_eval.format_loco(report.loco(), report.profiles, report.detector, None if same else base.loco(),
                                   None if same else base.profiles, "windowedGaussian"))
    print(f"({time.monotonic() - started:.1f}s)")


@evaluate_app.command("faults")
def evaluate_faults(
    devices: int = typer.Option(32, min=1, help="Simulated devices (types in turn: cold_room, conveyor, forklift, dock_door)."),
    hours: float = typer.Option(2.0, min=0.01, help="Simulated hours per seed (runs faster than real time)."),
    seeds: str = typer.Option("7", help="Comma-separated simulator seeds; each is one warehouse, scored together."),
    fault_every: float = typer.Option(120.0, min=0.0, help="Mean simulated seconds between injected faults (60 s each); 0: none."),
) -> None:
    """Inject the simulator's faults and score the sensor path's device step on them: detection rate and delay per fault
    type, false alarms per device-hour, and whether the model warned before the cold-room limit rule."""
    from wharf import faults

    try:
        seed_list = [int(x) for x in seeds.split(",") if x.strip()]
    except ValueError:
        console.print(f"[red]--seeds: {seeds!r} is not a comma-separated list of integers[/red]")
        raise typer.Exit(2) from None
    started = time.monotonic()
    print(faults.report_text(_settings(), devices, hours, seed_list, fault_every))
    print(f"({time.monotonic() - started:.1f}s)")


@evaluate_app.command("sentiment")
def evaluate_sentiment(
    files: list[Path] = typer.Argument(..., help="Files of `sentence<TAB>label` lines (label 1 positive, 0 negative)."),
    encoder: str = typer.Option("minilm", help="minilm (default), hashing or lexicon."),
    out: Path = typer.Option(None, help="Write each row's score and label here (one input file only)."),
    threads: int = typer.Option(0, help="torch CPU threads (0: torch's default)."),
) -> None:
    """Prequential accuracy and ROC AUC of the review sentiment model, in file order."""
    from online_models.evaluation import sentiment as sentiment_eval
    from online_models.sentiment import SentimentModel

    if threads:
        import torch

        torch.set_num_threads(threads)
    for path in files:
        if not path.is_file():
            console.print(f"[red]{path}: no such file[/red]")
            raise typer.Exit(2)
        with progress.bar(f"{path.name} ({encoder})") as report_progress:
            report = sentiment_eval.evaluate(path, lambda: SentimentModel(encoder), out=out if len(files) == 1 else None,
                                             progress=report_progress)
        print(sentiment_eval.format_report(report))


@app.command("settings")
def show_settings(markdown: bool = typer.Option(False, help="Print the settings table as Markdown (docs/settings.md; `python -m wharf.settingsdoc` rewrites it there).")) -> None:
    """Every setting: environment variable, current value, meaning."""
    settings = _settings()
    current = settings.shown()  # secrets masked, URL passwords removed
    if markdown:
        from wharf.settingsdoc import table

        print(table(), end="")
        return
    table = Table(title="Wharf settings (WHARF_* environment, then WHARF_CONFIG TOML)")
    for col in ("variable", "value", "meaning"):
        table.add_column(col)
    for env, _default, desc in describe():
        value = current.get(env, "")
        table.add_row(env, value, desc)
    console.print(table)


bench_app = typer.Typer(help="Benchmarks that print throughput, latency and memory beside same-run reference rates.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

@bench_app.command("all")
def bench_all(
    datasets: Path = typer.Option(Path(__file__).resolve().parent.parent.parent / "shared" / "datasets", help="The shared datasets folder."),
    out: Path = typer.Option(Path("docs/BENCHMARKS.md"), help="Where to write the report."),
    quick: bool = typer.Option(False, help="Shorter throughput runs (for a smoke check)."),
) -> None:
    """Run the sensor and commerce benchmarks and every evaluation, and write docs/BENCHMARKS.md."""
    from wharf.bench.all import run_all

    report = run_all(_settings(), datasets, out, quick=quick)
    failed = [s.title for s in report.sections if s.body.startswith("FAILED")]
    console.print(f"wrote {out}" + (f"; [red]failed: {', '.join(failed)}[/red]" if failed else ""))
    raise typer.Exit(1 if failed else 0)


from wharf.commands import commerce as _commerce  # noqa: E402
from wharf.commands import sensors as _sensors  # noqa: E402
from wharf.bench.learner import bench_learner  # noqa: E402
from wharf.bench.soak import bench_soak  # noqa: E402

_sensors.register(app, bench_app)
_commerce.register(app, bench_app, evaluate_app)
bench_app.command("soak")(bench_soak)
bench_app.command("learner")(bench_learner)


def main() -> None:
    install_log_redaction()
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
