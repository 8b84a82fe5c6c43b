"""The Faust app: broker, state store, topics and the ClickHouse storage every agent writes through.

Agents live in `agents/` and import `app`, `topics`, `limits` and `storage` from here. The
distributed engine is Kafka itself: each worker process joins the consumer group
`settings.app_id`, gets a share of every topic's partitions, and Faust tables
(RocksDB via rocksdict, backed by changelog topics) move with their partitions.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import sys
import time
from typing import Any

import faust
from mode.utils.objects import cached_property

from schemas import codec
from schemas.events import ClickEvent, DeviceStatus, SensorReading
from schemas.validation import Checked, Limits, check, processing_error
from streams.runtime import loopwatch
from streams.runtime import heap
from streams.runtime import patches
from streams.runtime import stopping
from streams.runtime.batches import BatchRouter
from streams.runtime.flow import KeepQueuesWhileFlowing
from streams.sinks.storage import Storage
from streams.runtime.topics import declare, declare_commerce, declare_device_sources
from streams.runtime.kafka_auth import faust_credentials
from schemas.settings import Settings, get_settings

log = logging.getLogger(__name__)

settings: Settings = get_settings()

CRASH_EXIT_SECONDS = 20.0  # after an agent failed: the most Faust's own shutdown may take before the process exits


# Every table partition is a RocksDB database of its own (5 tables x 8 partitions here). Faust's defaults give each
# a 64 MiB memtable (up to 3 before a flush) and a 2 GiB block cache: a worker's RSS grew with every table write until
# each memtable reached 64 MiB (195 MiB of unflushed write-ahead log after 19 minutes of the demo's load, and rising).
# These bound it at 40 x (2 x 2 + 4) MiB; the data itself is on disk and in the changelog.
ROCKSDB_OPTIONS = {"write_buffer_size": 2 << 20, "max_write_buffer_number": 2, "block_cache_size": 4 << 20}


class WharfApp(faust.App):
    """Faust's app with batch agents (`streams/runtime/batches.py`), flow control that never drops delivered records
    (`streams/runtime/flow.py`), and a worker that stops when any agent fails."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_agents = BatchRouter(self)
        self.on_stopping: list[stopping.StopHook] = []  # run when the worker stops: store what was taken (`streams/runtime/stopping.py`)
        self.on_revoking: list[stopping.StopHook] = []  # run at a rebalance before Faust waits for acks: checkpoint what was applied
        self._stop_started: float | None = None

    def Table(self, name: str, **kwargs: Any) -> Any:  # noqa: N802 - Faust's name
        """Faust's table, with small RocksDB buffers and caches (`ROCKSDB_OPTIONS`) unless the caller sets its own."""
        kwargs["options"] = {**ROCKSDB_OPTIONS, **(kwargs.get("options") or {})}
        return super().Table(name, **kwargs)

    async def on_stop(self) -> None:
        self._stop_started = stopping.arm_watchdog()
        await super().on_stop()

    async def _consumer_wait_empty(self, consumer: Any, logger: Any) -> None:
        """At a stop, a bounded wait that stores what was taken first (`streams/runtime/stopping.py`). In a rebalance the
        `on_revoking` hooks checkpoint first, then Faust's wait: records held for a checkpoint would otherwise be acked by
        none (the checkpoint timer rests while rebalancing, the revoke's checkpoint comes after this wait)."""
        if self._stop_started is None:
            await stopping.drain(consumer, self.on_revoking, time.monotonic(), what="rebalance")
            return await super()._consumer_wait_empty(consumer, logger)
        await stopping.drain(consumer, self.on_stopping, self._stop_started)
        return None

    @cached_property
    def flow_control(self) -> KeepQueuesWhileFlowing:
        """Faust's flow control, except that resuming what is already flowing drops nothing (`streams/runtime/flow.py`)."""
        return KeepQueuesWhileFlowing(loop=self.loop)

    def _new_consumer(self) -> Any:
        consumer = super()._new_consumer()
        self.batch_agents.install(consumer)  # before anything is fetched: the consumer reads its callback once
        return consumer

    async def _on_agent_error(self, agent: Any, exc: BaseException) -> None:
        """A Faust agent failed; the supervisor (`agent_supervisor` below) stops the worker. The exit timer starts
        first: Faust's own handler commits (`Consumer.on_task_error`), which can hang too."""
        exit_later(agent.name)
        await super()._on_agent_error(agent, exc)

    def on_batch_agent_error(self, name: str, exc: BaseException) -> None:
        """A batch agent failed (`streams/runtime/batches.py`); its task re-raises, which crashes the app and stops the worker."""
        log.critical("agent %s failed", name, exc_info=exc)
        exit_later(name)


def exit_later(agent_name: str) -> None:
    """Faust's shutdown after a crash sometimes hangs (seen in CI runs: 'We experienced a crash!', then no exit
    for 2 minutes), so the process exits by itself if it is still there `CRASH_EXIT_SECONDS` after an agent
    failed, as after a kill -9: nothing the agent had not acked was committed.

    The hangs seen in CI came after Python's finalisation, in the native libraries' teardown, where no Python
    thread runs (`wharf.cli.run_faust_worker` now exits before it). This timer is for a hang inside Faust's own
    shutdown: faulthandler's watchdog, a C thread that needs no GIL, writes every thread's stack to stderr and
    exits."""
    log.critical("agent %s failed; stopping the worker (exit within %.0f s)", agent_name, CRASH_EXIT_SECONDS)
    faulthandler.dump_traceback_later(CRASH_EXIT_SECONDS, exit=True, file=sys.__stderr__)


app = WharfApp(
    settings.app_id,
    broker=[f"kafka://{hp.strip()}" for hp in settings.kafka_bootstrap.split(",")],
    broker_credentials=faust_credentials(settings),  # SASL/SCRAM when WHARF_KAFKA_SECURITY says so
    store="rocksdb://",  # faust-streaming uses rocksdict when python-rocksdb is absent
    # One folder per (app, worker): RocksDB state of another app id must never be recovered into this one.
    datadir=str(settings.state_dir / "faust" / f"{settings.app_id}-{settings.web_port}"),
    topic_partitions=settings.topic_partitions,
    topic_replication_factor=1,
    topic_allow_declare=True,
    consumer_auto_offset_reset="earliest",
    producer_acks=-1,
    web_host=settings.advertised_web_host(),  # Faust's canonical URL: where other workers forward requests to
    web_bind=settings.web_host,
    web_port=settings.web_port,
    web_enabled=True,
    # Faust's own views (/router: the cluster's worker URLs, /table: table data, /graph, the stats index,
    # /performance) are not served: forwarding requests to a key's owner (`table_route`) needs none of them.
    # The routes that are served all pass `streams.web.guard`.
    web_router_enabled=False,
    web_tables_enabled=False,
    web_graph_enabled=False,
    web_stats_enabled=False,
    web_metrics_enabled=False,
    stream_wait_empty=True,
    broker_commit_interval=1.0,
    broker_session_timeout=settings.kafka_session_timeout_seconds,
    broker_heartbeat_interval=min(3.0, settings.kafka_session_timeout_seconds / 5),
    table_standby_replicas=0,
    logging_config=None,
    # An agent that raises leaves its batch unacked: its partitions' commits stop there, and every later
    # rebalance and shutdown waits for acks that never come. Faust's default restarts the agent and carries
    # on; this stops the worker (exit 1) instead, and Kafka redelivers the batch to the next owner.
    agent_supervisor="mode.CrashingSupervisor",
)
patches.install(app, fast_dispatch=settings.faust_fast_dispatch, fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
                fetch_min_bytes=settings.kafka_fetch_min_bytes)  # refuses a Faust version the patches were not tested with

topics = declare(app, settings)
commerce_topics = declare_commerce(app, settings)
device_sources = declare_device_sources(app, settings)
limits = Limits.from_settings(settings)  # what every agent and the collector accept (size, event time)
# Two batch agents read the clicks (raw storage, recommender) and two the readings (raw storage, scoring): each record
# is validated once and both get the result. Device status and commands have one reader, the scoring agent.
app.batch_agents.decode(topics["topic_clicks"], lambda m: check(m.value, ClickEvent, now=m.timestamp, limits=limits))


def check_device_record(topic: str, payload: bytes, now: float) -> Checked:
    """A record of the device topics as its agents get it (`Checked`), for the batch delivery and for the scoring
    agent's replay after a crash alike. A command is a JSON object whose meaning the device's owner checks."""
    if topic == settings.topic_sensor_readings:
        return check(payload, SensorReading, now=now, limits=limits)
    if topic == settings.topic_device_status:
        return check(payload, DeviceStatus, now=now, limits=limits)
    try:
        return Checked(payload, codec.loads(payload), None)
    except ValueError as exc:
        return Checked(payload, None, processing_error("sensor_command", "the device owner", exc, payload))


for _name in ("topic_sensor_readings", "topic_device_status", "topic_sensor_commands"):
    app.batch_agents.decode(topics[_name], lambda m: check_device_record(m.topic, m.value, m.timestamp))


@app.task
async def _watch_loop() -> None:
    loopwatch.watch.threshold_ms = settings.loop_stall_ms
    loopwatch.watch.start(asyncio.get_running_loop())


@app.timer(heap.FREEZE_SECONDS)
async def _freeze_heap() -> None:
    heap.freeze()


@app.timer(heap.SWEEP_SECONDS)
async def _sweep_heap() -> None:
    heap.sweep()


storage = Storage(settings, topics["topic_dead_letters"], limits.dead_letter_keep_bytes)
app.on_stopping.append(storage.flush_all)


@app.on_partitions_revoked.connect
async def _forget_revoked(app: Any, revoked: set, **kwargs: Any) -> None:
    """A partition that moves away may come back with newer rows stored by another worker."""
    for w in storage.writers.values():
        w.forget_partitions([tp.partition for tp in revoked if tp.topic == w.source_topic])


@app.on_before_shutdown.connect
async def _flush_on_shutdown(app: Any, **kwargs: Any) -> None:
    """What reached the writers after the stop's drain (`streams/runtime/stopping.py`): stored if ClickHouse answers in time."""
    try:
        await asyncio.wait_for(storage.flush_all(), timeout=1)
    except TimeoutError:
        log.warning("ClickHouse still unreachable at shutdown; unstored records stay uncommitted and will be redelivered")
