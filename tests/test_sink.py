"""The ClickHouse writer: batching, exactly-once storage, acks after storage, backpressure, outages."""

import asyncio
import time

import pytest

from schemas.clickhouse import TABLES, migrate
from streams.sinks.clickhouse import ClickHouseError, connect
from streams.sinks.block import Block
from streams.sinks.writer import ClickHouseWriter
from wharf.infra.clickhouse_server import ClickHouseServer

SPEC = TABLES["clicks"]


def click_rows(i: int) -> list[dict]:
    return [{"ts": time.time(), "event_id": f"e{i}", "user_id": f"u{i % 7}", "session_id": "s", "item_id": f"i{i % 3}",
             "action": "view", "price": None, "category": ""}]




def stored(ch) -> list[tuple]:
    return ch.query(f"SELECT kafka_partition, kafka_offset, event_id FROM {ch.table('clicks')} ORDER BY kafka_partition, kafka_offset")


async def put_range(writer, partition, offsets, acks=None):
    for o in offsets:
        await writer.put(partition, o, click_rows(o), (lambda o=o: acks.append((partition, o))) if acks is not None else None)


async def test_batches_by_size_and_acks_only_after_storage(ch):
    acks: list = []
    w = ClickHouseWriter(ch, SPEC, batch_rows=100, batch_seconds=30)
    await put_range(w, 0, range(99), acks)
    await asyncio.sleep(0.3)
    assert acks == [] and stored(ch) == []  # neither full nor old: nothing written, nothing acked
    await put_range(w, 0, [99], acks)  # the 100th row fills the batch
    async with asyncio.timeout(10):
        while len(acks) < 100:
            await asyncio.sleep(0.05)
    assert acks == [(0, o) for o in range(100)]  # in offset order
    assert len(stored(ch)) == 100 and w.stats.batches == 1
    await w.stop()


async def test_time_flush(ch):
    w = ClickHouseWriter(ch, SPEC, batch_rows=10_000, batch_seconds=0.3)
    started = time.monotonic()
    await put_range(w, 1, range(5))
    await w.flush()
    assert len(stored(ch)) == 5
    assert time.monotonic() - started < 5
    await w.stop()


async def test_the_same_batch_twice_is_stored_once(ch):
    first = ClickHouseWriter(ch, SPEC, batch_rows=1000, batch_seconds=0.1)
    await put_range(first, 0, range(50))
    await put_range(first, 3, range(20))
    await first.stop()
    # A new writer (a restarted worker) receives the same records again, plus new ones.
    acks: list = []
    second = ClickHouseWriter(ch, SPEC, batch_rows=1000, batch_seconds=0.1)
    await put_range(second, 0, range(60), acks)
    await put_range(second, 3, range(20), acks)
    await second.flush()
    rows = stored(ch)
    assert len(rows) == 80 and len(set(rows)) == 80  # 70 old + 10 new, no duplicate
    assert sorted(acks) == sorted([(0, o) for o in range(60)] + [(3, o) for o in range(20)])  # duplicates are acked too
    assert second.stats.records_skipped_duplicate == 70
    await second.stop()


async def test_a_record_queued_twice_is_stored_once(ch):
    w = ClickHouseWriter(ch, SPEC, batch_rows=1000, batch_seconds=0.1)
    await put_range(w, 2, [0, 1, 2])
    await put_range(w, 2, [1, 2, 3])  # a redelivery while the first copies are still pending
    await w.flush()
    assert [o for _, o, _ in stored(ch)] == [0, 1, 2, 3]
    await w.stop()


class LostAnswer:
    """The real backend, but the answer to the first insert is lost after the rows were stored."""

    def __init__(self, real):
        self.real, self.failed = real, False

    def __getattr__(self, name):
        return getattr(self.real, name)

    def insert_columns(self, *args, **kwargs):
        self.real.insert_columns(*args, **kwargs)
        if not self.failed:
            self.failed = True
            raise ClickHouseError("connection reset while reading the answer", retryable=True)


async def test_an_insert_whose_answer_was_lost_is_not_repeated(ch):
    w = ClickHouseWriter(LostAnswer(ch), SPEC, batch_rows=1000, batch_seconds=0.05, retry_initial_seconds=0.05)
    acks: list = []
    await put_range(w, 0, range(30), acks)
    await w.flush()
    assert len(stored(ch)) == 30 and w.stats.failures == 1
    assert len(acks) == 30
    await w.stop()


@pytest.mark.infra
async def test_clickhouse_down_rows_wait_with_backpressure_then_arrive_once(stack, server_url, unique):
    ch = connect(f"{server_url}/outage_{unique}")
    migrate(ch)
    server = ClickHouseServer(stack)
    acks: list = []
    w = ClickHouseWriter(ch, SPEC, batch_rows=20, batch_seconds=0.1, max_pending_rows=50,
                         retry_initial_seconds=0.1, retry_max_seconds=0.5)
    await put_range(w, 0, range(10), acks)
    await w.flush()
    assert len(acks) == 10
    server.stop()
    try:
        await put_range(w, 0, range(10, 60), acks)  # 50 rows: exactly the pending limit
        blocked = asyncio.create_task(put_range(w, 0, [60], acks))
        await asyncio.sleep(1.5)
        assert not blocked.done(), "put() must block once max_pending_rows wait"
        assert w.pending_rows == 50 and len(acks) == 10
        assert w.stats.failures >= 2 and "unreachable" in (w.stats.last_error or "")
    finally:
        server.start()
    async with asyncio.timeout(60):
        await blocked
        await w.flush()
    rows = stored(ch)
    assert [o for _, o, _ in rows] == list(range(61))  # all of them, once, in order
    assert acks == [(0, o) for o in range(61)]
    await w.stop()
    ch.command(f"DROP DATABASE IF EXISTS {ch.database}")


async def test_a_trickle_after_an_idle_spell_is_flushed_by_time(ch):
    w = ClickHouseWriter(ch, SPEC, batch_rows=10_000, batch_seconds=0.2)
    acks: list = []
    await put_range(w, 0, range(3), acks)
    async with asyncio.timeout(5):
        while len(acks) < 3:
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # the writer goes idle
    await put_range(w, 0, range(3, 5), acks)  # a few rows, far below batch_rows
    async with asyncio.timeout(5):
        while len(acks) < 5:
            await asyncio.sleep(0.05)
    assert len(stored(ch)) == 5
    await w.stop()


async def test_a_partition_revoked_while_its_batch_is_acked_leaves_the_writer_running(ch):
    """The writer yields while it acks a stored batch; a revocation meanwhile (OrderedAcker.forget, as the sensor
    agent does) must not stop it: the revoked records stay unacked for their next owner, later ones are acked."""
    from types import SimpleNamespace

    from streams.runtime.acks import OrderedAcker

    n = 20_000  # acked in one loop long enough to yield several times
    acker = OrderedAcker()
    acked: list[tuple[str, int]] = []

    def event(tp: str, offset: int) -> SimpleNamespace:
        message = SimpleNamespace(tp=tp, offset=offset, ack=lambda consumer: acked.append((tp, offset)))
        return SimpleNamespace(message=message, app=SimpleNamespace(consumer=None))

    w = ClickHouseWriter(ch, SPEC, batch_rows=n, batch_seconds=5)
    for o in range(n):  # one full batch over two partitions
        await w.put(o % 2, o, click_rows(o), acker.track(event(f"p{o % 2}", o)))

    async def revoke_p1_once_acks_begin() -> None:
        while not acked:
            await asyncio.sleep(0)
        acker.forget({"p1"})

    async with asyncio.timeout(30):
        await asyncio.gather(w.flush(), revoke_p1_once_acks_begin())
    assert {("p0", o) for o in range(0, n, 2)} <= set(acked)  # every record of the partition kept is acked
    assert 0 < sum(tp == "p1" for tp, _ in acked) < n // 2  # p1's acks stopped at the revocation
    assert w._task is not None and not w._task.done()  # noqa: SLF001 - the writer is still running
    await w.put(0, n, click_rows(n), acker.track(event("p0", n)))
    async with asyncio.timeout(30):
        await w.flush()
    assert acked[-1] == ("p0", n)
    await w.stop()


async def test_a_row_clickhouse_refuses_is_dead_lettered_and_the_writer_lives_on(ch):
    """A value a column cannot hold (chdb: the JSON insert refuses it; server: the driver cannot pack it) used to
    kill the writer or be retried forever; now the batch is split, the record is handed to `on_refused`, the
    others are stored, and everything is acked in order."""
    acks: list = []
    refused: list = []

    async def on_refused(partition, offset, rows, exc):
        refused.append((partition, offset, rows[0]["event_id"], type(exc).__name__))

    w = ClickHouseWriter(ch, SPEC, batch_rows=1000, batch_seconds=0.1, on_refused=on_refused, retry_initial_seconds=0.05)
    await put_range(w, 0, range(5), acks)
    await w.put(0, 5, [click_rows(5)[0] | {"price": "not a number"}], lambda: acks.append((0, 5)))
    await put_range(w, 0, range(6, 10), acks)
    async with asyncio.timeout(20):
        await w.flush()
    assert [o for _, o, _ in stored(ch)] == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert [r[:3] for r in refused] == [(0, 5, "e5")]
    assert acks == [(0, o) for o in range(10)]
    assert w.stats.records_refused == 1 and w.stats.records_stored == 9
    await put_range(w, 0, range(10, 12), acks)  # alive
    await w.flush()
    assert len(stored(ch)) == 11
    await w.stop()


async def test_a_batch_refused_whole_is_retried_before_it_is_dead_lettered(ch):
    """Every record refused looks like the table's fault, not the rows': retried `refuse_after` rounds first."""
    refused: list = []

    async def on_refused(partition, offset, rows, exc):
        refused.append(offset)

    w = ClickHouseWriter(ch, SPEC, batch_rows=1000, batch_seconds=0.05, on_refused=on_refused, retry_initial_seconds=0.05,
                         refuse_after=3)
    await w.put(1, 0, [click_rows(0)[0] | {"price": "bad"}])
    async with asyncio.timeout(20):
        await w.flush()
    assert refused == [0] and w.stats.failures == 2 and stored(ch) == []
    await w.stop()


def test_dead_letters_expire_after_their_ttl(ch):
    from schemas.deadletter import DeadLetter
    from schemas.rows import dead_letter
    from streams.sinks.ingest import expire_dead_letters

    spec = TABLES["dead_letters"]
    now = time.time()
    rows = []
    for i, age_days in enumerate((40, 31, 29, 1)):
        letter = DeadLetter.wrap(b"x", kind="click", source="http", errors=[{"field": "$", "value": "", "reason": "r"}])
        rows += [r | {"received_ts": now - age_days * 86400, "kafka_partition": 0, "kafka_offset": i} for r in dead_letter(letter)]
    ch.insert("dead_letters", spec.columns, rows, spec.time_columns)
    assert expire_dead_letters(ch, 0, now) is None
    assert expire_dead_letters(ch, 30, now) == int(now - 30 * 86400)
    deadline = time.monotonic() + 20  # a mutation runs in the background on a server
    while time.monotonic() < deadline and ch.query(f"SELECT count() FROM {ch.table('dead_letters')}")[0][0] != 2:
        time.sleep(0.2)
    assert sorted(o for (o,) in ch.query(f"SELECT kafka_offset FROM {ch.table('dead_letters')}")) == [2, 3]
    assert ch.query(f"SELECT payload_sha256 FROM {ch.table('dead_letters')} LIMIT 1")[0][0] == DeadLetter.wrap(
        b"x", kind="click", source="http", errors=[]).payload_sha256


def test_dead_letters_of_one_partition_from_two_stages_are_not_taken_for_copies(ch):
    """Validation (the storage agent) and a later step (the device owner) dead-letter records of the same source
    partition independently: a later offset from one must not make the other's earlier one look redelivered."""
    from schemas.validation import FieldError, InvalidEvent, processing_error
    from streams.sinks.ingest import SourceMarks

    where = {"kafka_topic": "readings", "kafka_partition": 3}
    invalid = InvalidEvent("sensor_reading", [FieldError("seq", "-1", "must be >= 0")])
    broke = processing_error("sensor_reading", "the anomaly model", RuntimeError("boom"))
    marks = SourceMarks()
    asyncio.run(marks.load(ch))
    assert not marks.is_copy(invalid.dead_letter(b"{}", "kafka", kafka_offset=10, **where))
    assert not marks.is_copy(broke.dead_letter(b"{}", "kafka", kafka_offset=5, **where))
    assert marks.is_copy(invalid.dead_letter(b"{}", "kafka", kafka_offset=10, **where))  # a real copy: redelivered
    assert broke.dead_letter(b"{}", "kafka", kafka_offset=5, **where).stage == "the anomaly model"


async def test_one_bad_record_among_many_is_found_by_halving_not_one_insert_each(ch):
    """Each INSERT makes a part: 1,000 single-record INSERTs would be 1,000 parts. Halving finds the bad record in
    about 2 log2(n) INSERTs, and every other record is stored once, in order."""
    refused: list = []
    inserts = 0
    real_insert = ch.insert_columns

    def counting_insert(*args, **kwargs):
        nonlocal inserts
        inserts += 1
        return real_insert(*args, **kwargs)

    async def on_refused(partition, offset, rows, exc):
        refused.append(offset)

    ch.insert_columns = counting_insert
    try:
        w = ClickHouseWriter(ch, SPEC, batch_rows=2000, batch_seconds=0.1, on_refused=on_refused)
        await put_range(w, 0, range(700))
        await w.put(0, 700, [click_rows(700)[0] | {"price": "bad"}])
        await put_range(w, 0, range(701, 1000))
        async with asyncio.timeout(30):
            await w.flush()
    finally:
        ch.insert_columns = real_insert
    assert refused == [700]
    assert [o for _, o, _ in stored(ch)] == [o for o in range(1000) if o != 700]
    assert inserts <= 2 * 10 + 1  # 1,000 records: 10 halvings, 2 INSERTs each, plus the first
    await w.stop()


def click_block(partition: int, offsets, acks=None, bad: int | None = None) -> Block:
    """Clicks as one block of columns, a row per record (`bad`: the offset whose price no column can hold)."""
    offsets = list(offsets)
    cols: dict[str, list] = {c: [] for c in click_rows(0)[0]}
    for o in offsets:
        for c, v in (click_rows(o)[0] | ({"price": "bad"} if o == bad else {})).items():
            cols[c].append(v)
    ack_of = (lambda o: (lambda: acks.append((partition, o)))) if acks is not None else (lambda o: None)
    return Block(cols, [partition] * len(offsets), offsets, [ack_of(o) for o in offsets])


async def test_blocks_of_columns_are_stored_once_and_acked_in_order(ch):
    """The column form (`put_block`) keeps the row form's guarantees: a record already stored (also inside a block
    queued again) is skipped, the others are acked in order after the INSERT, and one record ClickHouse refuses is
    dead-lettered with its rows while the rest of its block is stored."""
    acks: list = []
    refused: list = []

    async def on_refused(partition, offset, rows, exc):
        refused.append((partition, offset, rows))

    w = ClickHouseWriter(ch, SPEC, batch_rows=1000, batch_seconds=0.05, on_refused=on_refused)
    await w.put_block(click_block(0, range(0, 50), acks))
    await w.put_block(click_block(1, range(0, 10), acks))
    async with asyncio.timeout(20):
        await w.flush()
    await w.put_block(click_block(0, range(40, 60), acks, bad=55))  # 40-49 redelivered, 55 refused
    async with asyncio.timeout(20):
        await w.flush()
    assert [(p, o) for p, o, _ in stored(ch)] == [(0, o) for o in range(60) if o != 55] + [(1, o) for o in range(10)]
    assert [(p, o) for p, o, _ in refused] == [(0, 55)] and refused[0][2][0]["event_id"] == "e55"
    assert acks == [(0, o) for o in range(50)] + [(1, o) for o in range(10)] + [(0, o) for o in range(40, 60)]
    assert w.stats.records_skipped_duplicate == 10 and w.stats.records_refused == 1
    await w.stop()


async def test_a_block_with_a_column_the_table_lacks_or_a_short_column_is_refused_when_queued(ch):
    w = ClickHouseWriter(ch, SPEC, batch_rows=1000, batch_seconds=0.05)
    block = click_block(0, range(3))
    with pytest.raises(ValueError, match="'colour'.*not in the table"):
        await w.put_block(Block(block.columns | {"colour": ["red"] * 3}, block.partitions, block.offsets, block.acks))
    with pytest.raises(ValueError, match="column 'price' has 2 values for 3 rows"):
        Block(block.columns | {"price": [1.0, 2.0]}, block.partitions, block.offsets, block.acks)
    assert w.pending_rows == 0
    await w.stop()
