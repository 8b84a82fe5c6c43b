"""The one ClickHouse writer every agent uses.

Rows arrive with the Kafka coordinates of the record they came from: a record's rows as dicts (`put`), or the rows
of many records as columns (`put_block`, `streams/sinks/block.py`: no dict per row). The writer
- batches by size and time (one INSERT per batch: ClickHouse stores a block all or nothing);
- stores each record exactly once: it keeps, per source partition, the highest
  offset already in the table (read back from ClickHouse when it starts and after
  any failed insert, whose outcome is unknown) and drops rows at or below it, so a
  redelivered record, or a retried batch that had in fact landed, is not stored twice;
- acknowledges a record (so Faust may commit its offset) only after its rows are stored;
- retries with capped exponential backoff while ClickHouse is unreachable, keeping
  the rows; once `max_pending_rows` wait, `put` blocks, which stops the agent's
  stream and so the Kafka consumer: backpressure instead of unbounded memory;
- never dies of a row: a batch refused for its content (any error that is not
  "unreachable") is inserted again record by record, and the records ClickHouse
  still refuses go to `on_refused` (a dead letter, confirmed by Kafka) and are
  acked. If every record of the batch is refused, the fault is more likely the
  table's than the rows': that is retried like an outage, and only after
  `refuse_after` such rounds are the records dead-lettered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.clickhouse import TableSpec
from streams.runtime.slices import Slice
from streams.sinks.block import Ack, Block, columns_of
from streams.sinks.clickhouse import ClickHouse, ClickHouseError

log = logging.getLogger(__name__)

Refused = Callable[[int, int, list[dict[str, Any]], BaseException], Awaitable[None]]
"""(partition, offset, rows, error): keep a record ClickHouse refused (its dead letter), return once it is durable."""


@dataclass
class WriterStats:
    rows_stored: int = 0
    records_stored: int = 0
    records_skipped_duplicate: int = 0
    batches: int = 0
    failures: int = 0
    last_error: str | None = None
    last_flush_seconds: float = 0.0
    insert_seconds_total: float = 0.0
    retrying_since: float | None = None
    records_refused: int = 0


@dataclass
class ClickHouseWriter:
    ch: ClickHouse
    spec: TableSpec
    batch_rows: int = 10_000
    batch_seconds: float = 1.0
    max_pending_rows: int = 100_000
    retry_initial_seconds: float = 0.2
    retry_max_seconds: float = 30.0
    source_topic: str | None = None
    on_refused: Refused | None = None
    refuse_after: int = 3
    stats: WriterStats = field(default_factory=WriterStats)

    def __post_init__(self) -> None:
        self._pending: deque[Block] = deque()
        self._pending_rows = 0
        self._watermarks: dict[int, int] = {}
        self._loaded = False
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._oldest: float | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._flushing = 0  # callers of `flush` waiting: store now, without waiting for a fuller batch
        self._all_refused_rounds = 0

    @classmethod
    def from_settings(cls, ch: ClickHouse, spec: TableSpec, settings: Any) -> ClickHouseWriter:
        return cls(
            ch,
            spec,
            batch_rows=settings.sink_batch_rows,
            batch_seconds=settings.sink_batch_seconds,
            max_pending_rows=settings.sink_max_pending_rows,
            retry_max_seconds=settings.sink_retry_max_seconds,
        )

    # --- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name=f"clickhouse-writer:{self.spec.name}")
            self._task.add_done_callback(self._on_task_done)

    def _on_task_done(self, task: asyncio.Task) -> None:
        """A writer that dies stores and acks nothing more: its agents' records wait forever, so say so loudly."""
        if not task.cancelled() and task.exception() is not None:
            log.critical("ClickHouse writer for %s stopped; records waiting for it will not be acked", self.spec.name,
                         exc_info=task.exception())

    async def stop(self, flush: bool = True) -> None:
        """Flush what is pending (retrying while ClickHouse is down) and stop."""
        if flush:
            await self.flush()
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    # --- producer side -------------------------------------------------------
    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    async def put(self, partition: int, offset: int, rows: Sequence[dict[str, Any]], ack: Ack | None = None) -> None:
        """Queue the rows of one Kafka record (dicts; a missing key is NULL); `ack` runs once they are stored (or
        were already)."""
        await self.put_block(Block.of_record(partition, offset, rows, ack, self.spec.columns))

    async def put_block(self, block: Block) -> None:
        """Queue the rows of consecutive Kafka records as columns; each record's ack runs once its rows are stored
        (or were already). Raises ValueError for a column the table lacks."""
        block.check(self.spec.columns)
        if self._task is None:
            await self.start()
        while self._pending_rows >= self.max_pending_rows:
            self._space.clear()
            self._wake.set()
            await self._space.wait()
        if not len(block):
            return
        self._pending.append(block)
        self._pending_rows += block.n_rows
        self._idle.clear()
        if self._oldest is None:  # the first row of a batch starts its timer
            self._oldest = time.monotonic()
            self._wake.set()
        if self._pending_rows >= self.batch_rows:
            self._wake.set()

    async def flush(self) -> None:
        """Wait until everything queued so far is stored."""
        if not self._pending:
            return
        if self._task is None:
            await self.start()
        self._flushing += 1
        try:
            self._wake.set()
            await self._idle.wait()
        finally:
            self._flushing -= 1

    def forget_partitions(self, partitions: Sequence[int]) -> None:
        """Partitions moved to another worker: their high-water marks must be re-read if they come back."""
        for p in partitions:
            self._watermarks.pop(p, None)
        self._loaded = False

    # --- the loop ------------------------------------------------------------
    async def _run(self) -> None:
        delay = self.retry_initial_seconds
        while not self._stopping:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            age = time.monotonic() - (self._oldest or time.monotonic())
            if self._pending_rows < self.batch_rows and age < self.batch_seconds and not self._flushing:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self.batch_seconds - age)
                except TimeoutError:
                    pass
                continue
            try:
                await self._flush_once()
                delay = self.retry_initial_seconds
                self.stats.retrying_since = None
            except Exception as exc:  # noqa: BLE001 - unreachable, every record refused (see the docstring), or a bug: never die
                self.stats.failures += 1
                self.stats.last_error = str(exc).splitlines()[0]
                self.stats.retrying_since = self.stats.retrying_since or time.time()
                self._loaded = False  # the batch may or may not have landed: re-read the marks
                log.warning("ClickHouse insert into %s failed (%s); retrying in %.1fs with %d rows waiting",
                            self.spec.name, self.stats.last_error, delay, self._pending_rows)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_seconds)

    async def _load_watermarks(self) -> None:
        table = self.ch.table(self.spec.name)
        rows = await asyncio.to_thread(self.ch.query, f"SELECT kafka_partition, max(kafka_offset) FROM {table} GROUP BY kafka_partition")
        self._watermarks = {int(p): int(o) for p, o in rows}
        self._loaded = True

    async def _flush_once(self) -> None:
        if not self._loaded:
            await self._load_watermarks()
        batch: list[Block] = []
        n_rows = 0
        for block in self._pending:  # whole blocks: one larger than `batch_rows` is a batch of its own
            if batch and n_rows + block.n_rows > self.batch_rows:
                break
            batch.append(block)
            n_rows += block.n_rows
        marks = dict(self._watermarks)
        fresh = [f for b in batch if len(f := _after(b, marks))]  # records at or below their mark: already stored
        n_fresh_rows = sum(b.n_rows for b in fresh)
        n_fresh = sum(len(b) for b in fresh)
        started = time.monotonic()
        refused: list[tuple[Block, BaseException]] = []
        if n_fresh_rows and (error := await self._attempt(fresh)) is not None:
            refused = await self._insert_each([b.select([i]) for b in fresh for i in range(len(b))], error)
        took = time.monotonic() - started
        for r, exc in refused:
            await self._refuse(r, exc)
        self._watermarks = marks
        for _ in batch:
            self._pending.popleft()
        self._pending_rows -= n_rows
        self._oldest = time.monotonic() if self._pending else None
        self.stats.batches += 1
        self.stats.rows_stored += n_fresh_rows - sum(r.n_rows for r, _ in refused)
        self.stats.records_stored += n_fresh - len(refused)
        self.stats.records_skipped_duplicate += sum(len(b) for b in batch) - n_fresh
        self.stats.last_flush_seconds = took
        self.stats.insert_seconds_total += took
        work = Slice()  # a batch is up to `batch_rows` acks: 45-60 ms held the loop in `wharf bench commerce`
        for b in batch:
            for ack in b.acks:
                if ack is not None:
                    ack()
                    await work.tick()
            for ack in b.after:
                ack()
                await work.tick()
        if self._pending_rows < self.max_pending_rows:
            self._space.set()
        if not self._pending:
            self._idle.set()

    def _insert(self, blocks: list[Block]) -> None:
        """In the thread pool: the blocks' columns are joined there too (10,000 rows held the event loop up to 250 ms
        in `wharf bench commerce` when they were split out of dicts)."""
        self.ch.insert_columns(self.spec.name, self.spec.columns, columns_of(blocks, self.spec.columns), self.spec.time_columns)

    async def _attempt(self, records: list[Block]) -> BaseException | None:
        """Insert the records' rows in one INSERT: None once stored, or the error that refused them. Raises when
        ClickHouse is unreachable (the batch waits and is retried whole)."""
        try:
            await asyncio.to_thread(self._insert, records)
        except ClickHouseError as exc:
            if exc.retryable:
                raise
            return exc
        except Exception as exc:  # noqa: BLE001 - a client library refusing a value (chdb: TypeError for > 64-bit ints)
            return exc
        return None

    async def _insert_each(self, records: list[Block], error: BaseException) -> list[tuple[Block, BaseException]]:
        """The batch was refused for its content (`error`): find the records ClickHouse refuses, storing the others
        in offset order (so the high-water marks stay true). A refused part is halved and each half tried again,
        so one bad record among 10,000 costs about 28 INSERTs, not 10,000 (each INSERT makes a part).
        Raises ClickHouseError to retry the batch when ClickHouse becomes unreachable meanwhile, or when it
        refuses every record (for up to `refuse_after` rounds)."""
        refused: list[tuple[Block, BaseException]] = []

        async def split(part: list[Block], why: BaseException) -> None:
            if len(part) == 1:
                refused.append((part[0], why))
                return
            mid = len(part) // 2
            for half in (part[:mid], part[mid:]):
                if (half_error := await self._attempt(half)) is not None:
                    await split(half, half_error)

        await split(records, error)
        if len(refused) == len(records):
            self._all_refused_rounds += 1
            if self._all_refused_rounds < self.refuse_after:
                error = refused[0][1]
                raise ClickHouseError(f"every record of a batch was refused: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
        self._all_refused_rounds = 0
        return refused

    async def _refuse(self, record: Block, exc: BaseException) -> None:
        """A record (a block of one) ClickHouse will not store: its dead letter first (when this writer has a way to
        send one), then it counts as done. Without one (the dead-letter table's own writer) the rows are logged whole."""
        partition, offset, rows = record.partitions[0], record.offsets[0], record.record_rows()
        self.stats.records_refused += 1
        self.stats.last_error = f"refused {self.source_topic}/{partition}/{offset}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
        if self.on_refused is not None:
            try:
                await self.on_refused(partition, offset, rows, exc)
            except Exception as error:  # noqa: BLE001 - Kafka did not take the dead letter: retry the batch later
                raise ClickHouseError(f"dead letter of a refused record not sent: {error}", retryable=True) from error
            log.error("ClickHouse refused a record for %s (%s/%d/%d): %s; dead-lettered", self.spec.name,
                      self.source_topic, partition, offset, self.stats.last_error)
        else:
            log.critical("ClickHouse refused a record for %s (%s/%d/%d): %s; its rows: %.2000r", self.spec.name,
                         self.source_topic, partition, offset, self.stats.last_error, rows)


def _after(block: Block, marks: dict[int, int]) -> Block:
    """The block's records above their partition's mark (each raises the mark): the block itself when all are."""
    keep = []
    for i, (p, o) in enumerate(zip(block.partitions, block.offsets, strict=True)):
        if o > marks.get(p, -1):
            keep.append(i)
            marks[p] = o
    return block if len(keep) == len(block) else block.select(keep)
