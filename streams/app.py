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
from typing import Any

import faust
from mode.utils.objects import cached_property

from schemas.clickhouse import TABLES, migrate
from schemas.events import ClickEvent
from schemas import codec
from schemas.validation import Limits, check, processing_error
from streams import heap, loopwatch, partition_check, stopping
from streams.batches import BatchRouter
from streams.clickhouse import ClickHouse, from_settings
from streams.flow import KeepQueuesWhileFlowing
from streams.ingest import send_dead_letter
from streams.sink import ClickHouseWriter, Refused
from streams.topics import declare
from wharf.kafka_auth import faust_credentials
from wharf.settings import Settings, get_settings

log = logging.getLogger(__name__)

settings: Settings = get_settings()

CRASH_EXIT_SECONDS = 20.0  # after an agent failed: the most Faust's own shutdown may take before the process exits


class WharfApp(faust.App):
    """Faust's app with batch agents (`streams/batches.py`), flow control that never drops delivered records
    (`streams/flow.py`), and a worker that stops when any agent fails."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_agents = BatchRouter(self)
        self.on_stopping: list[stopping.StopHook] = []  # run when the worker stops: store what was taken (`streams/stopping.py`)
        self._stop_started: float | None = None

    async def on_stop(self) -> None:
        self._stop_started = stopping.arm_watchdog()
        await super().on_stop()

    async def _consumer_wait_empty(self, consumer: Any, logger: Any) -> None:
        """At a stop, a bounded wait that stores what was taken first (`streams/stopping.py`); in a rebalance, Faust's."""
        if self._stop_started is None:
            return await super()._consumer_wait_empty(consumer, logger)
        await stopping.drain(consumer, self.on_stopping, self._stop_started)
        return None

    @cached_property
    def flow_control(self) -> KeepQueuesWhileFlowing:
        """Faust's flow control, except that resuming what is already flowing drops nothing (`streams/flow.py`)."""
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
        """A batch agent failed (`streams/batches.py`); its task re-raises, which crashes the app and stops the worker."""
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
    # The routes that are served all pass `streams.guard`.
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

topics = declare(app, settings)
limits = Limits.from_settings(settings)  # what every agent and the collector accept (size, event time)
# Two batch agents read the clicks (raw storage, recommender): each click is validated once and both get the result.
app.batch_agents.decode(topics["topic_clicks"], lambda m: check(m.value, ClickEvent, now=m.timestamp, limits=limits))
partition_check.install()


@app.task
async def _fast_dispatch() -> None:
    if settings.faust_fast_dispatch:
        from streams import fastpath

        fastpath.install(app)


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


class Storage:
    """ClickHouse for this worker: one connection, migrations applied once, one writer per table."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._ch: ClickHouse | None = None
        self._writers: dict[str, ClickHouseWriter] = {}

    @property
    def ch(self) -> ClickHouse:
        if self._ch is None:
            self._ch = from_settings(self.settings)
            migrate(self._ch)
        return self._ch

    def writer(self, table: str, source_topic: str) -> ClickHouseWriter:
        if table not in self._writers:
            w = ClickHouseWriter.from_settings(self.ch, TABLES[table], self.settings)
            w.source_topic = source_topic
            if table != "dead_letters":  # the dead letters' own writer cannot dead-letter: it logs the rows
                w.on_refused = self._dead_letter_of(table, source_topic)
            self._writers[table] = w
        return self._writers[table]

    @staticmethod
    def _dead_letter_of(table: str, source_topic: str) -> Refused:
        """Rows ClickHouse refused become a dead letter of their source record (the rows as JSON: nothing is lost)."""

        async def refused(partition: int, offset: int, rows: list[dict[str, Any]], exc: BaseException) -> None:
            error = processing_error(f"{table} row", "the ClickHouse insert", exc)
            await send_dead_letter(topics["topic_dead_letters"], error, codec.dumps(rows), "kafka", keep_bytes=limits.dead_letter_keep_bytes,
                                   kafka_topic=source_topic, kafka_partition=partition, kafka_offset=offset)

        return refused

    @property
    def writers(self) -> dict[str, ClickHouseWriter]:
        return self._writers

    async def flush_all(self) -> None:
        await asyncio.gather(*(w.flush() for w in self._writers.values()))

    async def stop(self) -> None:
        await asyncio.gather(*(w.stop() for w in self._writers.values()))


storage = Storage(settings)
app.on_stopping.append(storage.flush_all)


@app.on_partitions_revoked.connect
async def _forget_revoked(app: Any, revoked: set, **kwargs: Any) -> None:
    """A partition that moves away may come back with newer rows stored by another worker."""
    for w in storage.writers.values():
        w.forget_partitions([tp.partition for tp in revoked if tp.topic == w.source_topic])


@app.on_before_shutdown.connect
async def _flush_on_shutdown(app: Any, **kwargs: Any) -> None:
    """What reached the writers after the stop's drain (`streams/stopping.py`): stored if ClickHouse answers in time."""
    try:
        await asyncio.wait_for(storage.flush_all(), timeout=1)
    except TimeoutError:
        log.warning("ClickHouse still unreachable at shutdown; unstored records stay uncommitted and will be redelivered")
