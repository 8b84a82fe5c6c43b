"""Sensor path: anomaly scores and alarms per device, checkpointed and restored with their partitions.
`score_devices` consumes readings, device status and operator commands together.
All three topics are keyed by device_id with the same partition count, so one
device's events land on one partition number everywhere, and the worker that owns
that partition owns the device: its anomaly model (a row of the owner's `DeviceBank`),
its alarms and its de-duplication window (a `DeviceState`).

Hot path, per batch (a batch agent, `streams/runtime/batches.py`): the records arrive validated (a reading once
for this agent and the raw storage agent, `streams.runtime.app.check_device_record`); drop exact duplicates (device_id, seq, ts),
score the readings of the batch's devices in one call per slice (`score_batch`: score first, then learn), run the
alarm conditions in event order, produce alarm events (not waited for here: the checkpoint that acks their records
waits until Kafka has them, so the next batch is not held up by a round trip), then
hand one `anomaly_scores` row per reading to the writer (a batch's rows as one block of columns), which acks the
reading once the row is stored. The writer keys exactly-once on the readings partition/offset.

State survives restarts and rebalances by the durability protocol every stateful agent
shares (`streams/state/checkpoint.py`): the `sensor-state` table's changelog (compacted
Kafka topic, one record per device, written with `send_changelog` to the device's
partition) gets, every `sensor_checkpoint_seconds`, after `MAX_WAITING` records and
whenever partitions are revoked or the worker stops, first the alarm events of the records it
includes confirmed by Kafka and the flushed score writer (every score up to the checkpoint in
ClickHouse), then each changed device's state (`schemas.state`) and one marker per partition
with the last offset the state includes, per topic; only then are the records it includes acked.
Scoring stops only while a checkpoint's cut is taken (the records applied, the marks and a copy
of the changed devices, all in step under the owner's lock); the encoding runs in a thread and the writes in a task, one checkpoint after the other. A worker that gets the partition (a restart, or
another worker after a rebalance) restores that state; Kafka redelivers everything after
it, and records at or below the marker are already in it and are skipped.

What a crash (kill -9) loses: nothing; the model and alarm updates since the last
checkpoint are made again from the redelivered records. What they sent the first time is
sent again with the same identity: score rows are dropped by the writer (by offset),
alarm events by their id and revision (alarm ids and revisions depend on event times
only, so they come out the same; the only wall-clock alarm, silence, may be raised once
more), dead letters by their source offset.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from operator import attrgetter
from typing import Any

import numpy as np

from online_models.alarms import source_of
from online_models.anomaly.bank import DeviceBank
from online_models.sensing import score_batch
from schemas import codec, rows
from schemas.events import Alert, DeviceStatus, SensorReading, to_epoch
from schemas.state import StateFormatError
from schemas.validation import InvalidEvent, processing_error
from streams.runtime import counts
from streams.runtime.acks import OrderedAcker
from streams.runtime.app import app, device_sources, limits, settings, storage, topics
from streams.runtime.slices import Slice
from streams.sinks.block import Block
from streams.sinks.ingest import produce_dead_letter
from streams.state.checkpoint import Checkpoint, Cut, Marks
from streams.web.registry import lent
from agents.devices import RULES, SETUP, DeviceState

log = logging.getLogger(__name__)

BATCH = settings.sink_batch_rows
WITHIN = min(settings.sink_batch_seconds, 0.05)  # latency: alarms should not wait for a full batch
REVOKE_CHECKPOINT_TIMEOUT = 30.0  # below Faust's broker session timeout
MAX_WAITING = 100_000  # records applied and in no checkpoint yet (held unacked, ~0.5 KB each, see _let_go) that force one; with one being written, at most twice as many wait


def marker_key(partition: int) -> bytes:
    return b"\x00offsets/%d" % partition


state_table = app.Table("sensor-state", key_type=bytes, value_type=bytes, store="memory://local",  # yarl: a bare "memory://" is falsy and Faust would fall back to RocksDB
                        partitions=settings.topic_partitions, help="DeviceState per device (schemas.state) + offset markers per partition.")
state_table.key_serializer = state_table.value_serializer = "raw"


class Owner:
    """The devices this worker owns, their checkpoints and restores. One per worker process."""

    def __init__(self) -> None:
        self.devices: dict[str, DeviceState] = {}
        self.bank = SETUP.new_bank()  # the owned devices' models; a DeviceState's model is only its checkpoint form
        self.dirty: set[str] = set()
        self.marks = Marks()  # what the state includes, per (topic, partition)
        self.ckpt = Checkpoint("sensors")  # acks wait for the checkpoint that includes their record
        self.loaded_partitions: set[int] = set()
        self.lock = asyncio.Lock()
        self.checkpoints = 0
        self.writing: asyncio.Task[int] | None = None  # the newest checkpoint being written (`checkpoint_behind`)
        self.sending: list[asyncio.Future] = []  # alarm events produced, not yet in a checkpoint's cut (`send_alerts`)
        self.values: list[Any] = []  # held records whose values the raw storage agent still needed (`_let_go`)
        self.duplicates = 0
        self.dead_lettered = 0
        self.acker = OrderedAcker()
        self.watermark: float | None = None  # newest event time processed (all owned devices)
        self.last_arrival = time.monotonic()  # wall time of the last reading processed

    # --- restore -------------------------------------------------------------------------------------------
    def _store(self) -> dict:
        return state_table.data.data  # the memory store's dict: key bytes -> value bytes

    def ensure_partition(self, partition: int) -> None:
        """First event of a partition since it was assigned: read its marker (what its checkpoint includes)."""
        if partition in self.loaded_partitions:
            return
        self.loaded_partitions.add(partition)
        try:
            self.marks.restore(partition, Marks.decode(self._store().get(marker_key(partition))))
        except ValueError as exc:
            log.error("%s: offset marker of partition %d refused (%s); the partition starts without one", state_table.name, partition, exc)

    async def load_owned(self) -> None:
        """Load every device of the partitions we own (recovered from the changelog), not only those that speak:
        a silent device must be noticed by its new owner too."""
        store = state_table.data
        for key, p in list(store._key_partition.items()):
            device_id = key.decode(errors="replace")
            if key.startswith(b"\x00") or device_id in self.devices:
                continue
            self.ensure_partition(p)
            self.device(device_id, p)

    def device(self, device_id: str, partition: int) -> DeviceState:
        st = self.devices.get(device_id)
        if st is None:
            st = self._restore(device_id, partition)
            st.partition = partition
            try:
                self.bank.insert(device_id, st.model)
            except ValueError as exc:  # e.g. checkpointed under other `sensor_model_options`
                log.error("device %r: checkpointed model refused by the bank (%s); its model starts fresh", device_id, exc)
                self.bank.insert(device_id, SETUP.new_model())
            st.model = None  # the bank holds it; a checkpoint writes its rows (`_encode`)
            self.devices[device_id] = st
        return st

    def _restore(self, device_id: str, partition: int) -> DeviceState:
        """The device's checkpointed state; a record refused (a pickle, or not a device's state) is logged and the
        device starts fresh: a crafted record must neither run code nor stop the worker."""
        blob = self._store().get(device_id.encode())
        try:
            if blob:
                st = DeviceState.load(blob)
                if st.device_id == device_id:
                    return st
                raise StateFormatError(f"the state of device {st.device_id!r}")
        except StateFormatError as exc:
            log.error("%s: state of device %r refused (%s); the device starts fresh", state_table.name, device_id, exc)
        return DeviceState.new(device_id, partition)

    def known_device(self, device_id: str, partition: int) -> DeviceState | None:
        """The device's state if it has any here (in memory or checkpointed), else None: only telemetry and status
        create a device, so made-up ids in commands cannot grow the state."""
        if device_id in self.devices or device_id.encode() in self._store():
            return self.device(device_id, partition)
        return None

    # --- the work ----------------------------------------------------------------------------------------
    async def apply(self, recs: list[Any], runs: Sequence[Any] = ()) -> None:
        """Apply records in order; each is acked once its rows are stored and a checkpoint includes it
        (`streams/state/checkpoint.py`): the batch's records as `runs` (`OrderedAcker.track_batch`, one per partition).
        A redelivered record the restored state includes never gets here (`score_devices` acks it at once).

        A record is the Faust message (`topic`, `partition`, `offset`, `timestamp`), its `value` what the batch
        delivery's check made of it (`Checked`, `streams.runtime.app.check_device_record`). The loops keep no object a
        reading of their own (no record wrapper, no tuple: the event at the record's index in `evs`), which the
        garbage collector would scan while the batch is in flight.

        No record can stop the path: one that is invalid, or breaks its device's model or the alarm step, becomes a
        dead letter (Kafka confirms it before the record is acked) and the others go on."""
        readings: dict[str, list[int]] = defaultdict(list)  # a device's readings: their indexes in `recs` and `evs`
        evs: list[Any] = []  # the event of each record, None if it has none to apply (refused, a duplicate)
        letters: list[tuple[Any, InvalidEvent]] = []
        devices, readings_topic = self.devices, settings.topic_sensor_readings
        last: dict[tuple[str, int], int] = {}  # the batch's newest offset per (topic, partition), for the marks
        for i, r in enumerate(recs):
            key = (r.topic, r.partition)
            if r.offset > last.get(key, -1):
                last[key] = r.offset
            checked = r.value
            if r.topic == readings_topic:
                ev = checked.event
                if ev is None:
                    evs.append(None)  # dead-lettered by the storage agent, which shares this check
                    continue
                st = devices.get(ev.device_id)
                if st is None:
                    st = self.device(ev.device_id, r.partition)
                if st.recent.seen((ev.seq, ev.ts)):
                    self.duplicates += 1
                    evs.append(None)
                    continue
                readings[ev.device_id].append(i)
                evs.append(ev)
            elif checked.error is not None:  # status, commands: nothing else reads them, their dead letters are sent here
                letters.append((r, checked.error))
                evs.append(None)
            else:
                evs.append(checked.event)
        for (topic, partition), offset in last.items():
            self.marks.apply(topic, partition, offset)
        # models: one call for the readings of many devices at once, in slices of about SCORE_SLICE readings with a
        # yield between them (a batch of 10,000 readings in one go held the loop for seconds: commits, heartbeats
        # and requests are served between slices)
        # the models' results by record index, as columns (a tuple a reading was an object the collector scanned)
        score_of, anomalous, threshold_of = np.zeros(len(recs)), np.zeros(len(recs), bool), np.zeros(len(recs))
        metric_of = np.full(len(recs), None, object)
        work = Slice()
        batches = _slices(list(readings.items()))
        while batches:
            await work.tick()
            batch = batches.pop()
            todo = [i for _, items in batch for i in items]
            sliced = [evs[i] for i in todo]
            try:
                scored = score_batch(self.bank, list(map(_device_id, sliced)), list(map(_ts, sliced)), list(map(_metrics, sliced)))
                score_of[todo], anomalous[todo], threshold_of[todo] = scored.scores, scored.is_anomaly, scored.thresholds
                metric_of[todo] = scored.metrics
            except Exception as exc:  # noqa: BLE001 - readings that break their device's model are refused, not fatal
                if len(batch) > 1:  # again per device, so that only the device whose readings break it is refused
                    batches += [[item] for item in batch]
                    continue
                device_id, items = batch[0]
                log.exception("device %s: the model failed on %d readings; they are dead-lettered", device_id, len(items))
                for i in items:
                    letters.append((recs[i], processing_error("sensor_reading", "the anomaly model", exc, recs[i].value.payload)))
                    evs[i] = None
        self.dirty.update(readings)
        # alarms in event order
        alerts: list[Alert] = []
        scored: list[SensorReading] = []  # `rows.anomaly_scores`' arguments, as columns (no tuple a reading)
        metric_col: list[str] = []
        value_col: list[float] = []
        score_col: list[float] = []
        threshold_col: list[float] = []
        anomaly_col: list[int] = []
        partitions: list[int] = []  # the scored records' partitions and offsets
        offsets: list[int] = []
        newest, arrived = self.watermark, False
        results = zip(score_of.tolist(), anomalous.tolist(), threshold_of.tolist(), metric_of.tolist())
        for i, (r, ev, (score, is_anom, thr, metric)) in enumerate(zip(recs, evs, results)):
            if ev is None:
                continue
            # ~30 us a record: a batch of 10,000 held the loop for 0.4 s (`wharf bench sensors`); asked every 16 records
            if i & 15 == 15 and await work.tick() and alerts:
                self.sending += await send_alerts(alerts)  # its first alarms go out now, not after its last record
                alerts = []
            try:
                if type(ev) is SensorReading:  # the hot path, inline: one call per reading less
                    mon = devices[ev.device_id].monitor
                    mon.site, mon.zone, mon.device_type = ev.site, ev.zone, ev.device_type
                    alerts += mon.reading(ev.ts, ev.metrics, RULES, score, is_anom, metric)
                    newest = ev.ts if newest is None or ev.ts > newest else newest
                    arrived = True
                    metrics = ev.metrics
                    if not metric or metric not in metrics:
                        value = float(next(iter(metrics.values())))
                        metric = metric or next(iter(metrics))
                    else:
                        value = float(metrics[metric])
                    scored.append(ev)  # nothing below raises: the columns stay in step
                    metric_col.append(metric)
                    value_col.append(value)
                    score_col.append(score)
                    threshold_col.append(thr)
                    anomaly_col.append(int(is_anom))
                    partitions.append(r.partition)
                    offsets.append(r.offset)
                else:
                    alerts += self._alarms(r, ev)
            except Exception as exc:  # noqa: BLE001 - one record's alarm step must not stop the others
                log.exception("%s/%d/%d broke the alarm step; dead-lettered", r.topic, r.partition, r.offset)
                kind = {settings.topic_sensor_readings: "sensor_reading", settings.topic_device_status: "device_status"}.get(r.topic, "sensor_command")
                letters.append((r, processing_error(kind, "the alarm step", exc, r.value.payload)))
        self.sending += await send_alerts(alerts)
        letters.sort(key=lambda x: (x[0].topic, x[0].partition, x[0].offset))  # in offset order (`produce_dead_letter`)
        await asyncio.gather(*[await produce_dead_letter(topics["topic_dead_letters"], error, r.value.payload, "kafka",
                                                         keep_bytes=limits.dead_letter_keep_bytes, kafka_topic=r.topic,
                                                         kafka_partition=r.partition, kafka_offset=r.offset)
                               for r, error in letters])
        self.dead_lettered += len(letters)
        if arrived:  # the newest event time and the wall time of the last reading processed (`silence_clock`)
            self.watermark = newest
            self.last_arrival = time.monotonic()
        scores = rows.anomaly_scores(scored, metric_col, value_col, score_col, threshold_col, anomaly_col) if scored else {}
        if settings.sensor_publish_scores and scored:
            futs = [await topics["topic_anomaly_scores"].send(key=m["device_id"].encode(), value=codec.dumps(m))
                    for m in rows.anomaly_score_messages(scores)]
            await asyncio.gather(*futs)
        # acks wait for the next checkpoint (which first waits for the alarm events sent above), and the batch's
        # readings also for their score rows (dead letters are confirmed above): one held entry per partition run
        hold, held_values = self.ckpt.hold, self.values
        stored = []
        for run in runs:
            stored.append(hold(run.message.partition, run, n=len(run.messages)))
            if not _let_go(run):
                held_values.append(run)
        if scored:
            await scores_writer().put_block(Block(scores, partitions, offsets, [None] * len(scored), after=stored))
        else:
            for done in stored:
                done()

    def _alarms(self, r: Any, ev: Any) -> list[Alert]:
        """The alarm step of a status or command record (readings': inline in `apply`); raises for a record it
        cannot handle."""
        if isinstance(ev, DeviceStatus):
            st = self.device(ev.device_id, r.partition)
            st.monitor.site, st.monitor.zone = ev.site, ev.zone
            st.monitor.device_type = ev.device_type or st.monitor.device_type
            self.dirty.add(ev.device_id)
            return st.monitor.status(ev.ts, ev.state, ev.interval_s)
        if not (isinstance(ev, dict) and ev.get("command") == "ack"):
            raise ValueError("is not a known command (expected an object with command 'ack')")
        device_id = source_of(str(ev.get("alarm_id", "")))  # ValueError for an id no device alarm has
        st = self.known_device(device_id, r.partition)  # a command never creates a device: made-up ids cannot grow state
        if st is None:
            raise ValueError(f"names device {device_id[:64]!r}, which has no state here")
        self.dirty.add(device_id)
        by = ev.get("by")
        a = st.monitor.alarms.ack(str(ev["alarm_id"]), to_epoch(ev.get("ts") or r.timestamp), by[:64] if isinstance(by, str) else None)
        return [a] if a else []

    # --- checkpoints ---------------------------------------------------------------------------------------
    async def checkpoint(self) -> int:
        """The durability protocol's commit (`streams/state/checkpoint.py`), waited for: flush the scores, write the
        changed devices and the offset markers to the changelog, then ack what they include; returns records acked
        by it. The caller holds `lock`; checkpoints still in flight finish first."""
        self.ckpt.hurry()
        return await self.checkpoint_behind(paced=False)

    def checkpoint_behind(self, paced: bool = True) -> asyncio.Task[int]:
        """Start a checkpoint and let the scoring go on: under the caller's `lock` only the cut is taken (the records
        applied, a copy of the changed devices, the marks: ~30 us a device); encoding (~0.4 ms a device) runs in a
        thread and the changelog writes after the previous checkpoint's, in a task that nothing else waits for, so its
        acks are released paced (`Checkpoint.commit`); `checkpoint` hurries them."""
        snap = self._snapshot()
        task = asyncio.create_task(self.ckpt.commit(partial(self._write, snap, self.writing), flush=partial(_flush, snap.sent),
                                                    cut=snap.cut, paced=paced))
        task.add_done_callback(self._written)
        self.writing = task
        return task

    def in_flight(self) -> asyncio.Task[int] | None:
        """The newest checkpoint still being written, if any; raises what a checkpoint that failed raised, so the
        agent stops the worker as it did when it wrote them itself (its records stay unacked)."""
        task = self.writing
        if task is None or not task.done():
            return task
        self.writing = None
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()
        return None

    def _written(self, task: asyncio.Task[int]) -> None:
        if not task.cancelled() and task.exception() is None:
            self.checkpoints += 1

    def _snapshot(self) -> Snapshot:
        """What the next checkpoint writes, in step: every record applied so far, the marks they moved, and copies
        of the devices they changed (their bank rows, alarms, de-duplication windows)."""
        ids = [d for d in self.dirty if d in self.devices]
        self.dirty.clear()
        sent, self.sending = self.sending, []
        states = [self.devices[d].copy() for d in ids]
        marks = {p: Marks.encode(self.marks.of(p)) for p in self.marks.partitions()}
        return Snapshot(self.ckpt.cut(), self.bank.snapshot(ids), states, marks, sent)

    async def _write(self, snap: Snapshot, previous: asyncio.Task[int] | None, cut: Cut) -> None:
        """The copied devices, encoded in a thread, and each partition's marker to the changelog after those of the
        previous checkpoint (newest last, acks in order), confirmed by Kafka (all partitions)."""
        blobs = await asyncio.to_thread(_encode, snap)
        if previous is not None:
            await previous
        futs = []
        store = self._store()
        work = Slice()
        for (partition, key, blob) in blobs:
            await work.tick()
            futs.append(state_table.send_changelog(partition, key, blob))
            store[key] = blob
            state_table.data._key_partition[key] = partition  # so Faust drops it locally if the partition moves
        for p, value in snap.marks.items():
            if store.get(marker_key(p)) != value:
                futs.append(state_table.send_changelog(p, marker_key(p), value))
                store[marker_key(p)] = value
                state_table.data._key_partition[marker_key(p)] = p
        if futs:
            await app.producer.flush()
            await asyncio.gather(*futs)

    def forget(self) -> None:
        """After a rebalance: reload from the (recovered) table, which now holds the latest state of every partition we own."""
        self.devices.clear()
        self.values.clear()
        self.writing = None  # waited for by the revoke; if it failed or timed out, its records go to the next owner
        self.sending = []  # their records go to the next owner too, which sends these alarms again (same identity)
        self.bank = SETUP.new_bank()
        self.dirty.clear()
        self.marks.forget()
        self.loaded_partitions.clear()

    def let_go(self) -> None:
        """Drop the values of held records that the raw storage agent has stored since (`_let_go`)."""
        self.values = [done for done in self.values if not _let_go(done)]

    def silence_clock(self, grace: float = 30.0) -> float:
        """'Now' for silence checks: the newest event time processed, so a worker that lags behind
        (busy, or catching up after a restart) does not call every device silent; it moves on with
        the wall clock only once no reading at all has arrived for `grace` seconds."""
        if self.watermark is None:
            return time.time()
        idle = time.monotonic() - self.last_arrival
        return self.watermark + max(0.0, idle - grace)

    async def check_silence(self) -> None:
        now = self.silence_clock()
        alerts = []
        for st in self.devices.values():
            if a := st.monitor.check_silence(now):
                alerts.append(a)
                self.dirty.add(st.device_id)
        self.sending += await send_alerts(alerts)


@dataclass
class Snapshot:
    """One checkpoint's cut, taken in step under the owner's lock: written later, while scoring goes on."""

    cut: Cut
    bank: DeviceBank  # copies of the changed devices' rows only
    states: list[DeviceState]  # copies, their models in `bank`
    marks: dict[int, bytes]  # per partition: the encoded `Marks` the state includes
    sent: list[asyncio.Future]  # the alarm events of the records in `cut`: Kafka has them before those are acked


def _encode(snap: Snapshot) -> list[tuple[int, bytes, bytes]]:
    """(partition, key, blob) of each copied device (`DeviceState.dump`, its model as its bank rows: `DeviceRow`);
    runs in a thread: it touches only the snapshot."""
    out = []
    for st in snap.states:
        st.model = snap.bank.row(st.device_id)
        out.append((st.partition, st.device_id.encode(), st.dump()))
        st.model = None
    return out


def _let_go(run: Any) -> bool:
    """Drop held records' decoded values (~5 KB a reading) from their messages, which wait here for a checkpoint,
    once no other agent needs them: when only this agent's ack is left (the raw storage agent stored and acked
    them) or none; returns whether all of the run's are gone. The messages themselves are what acking needs.

    Once this agent's ack is given (a checkpoint included the run), a reference left is another agent's: the values
    stay for it (dropping them then crashed the raw storage agent, which was more than a checkpoint behind during a
    loaded `wharf bench sensors` start) and this agent holds the run no longer."""
    if run.finished:
        return True
    gone = True
    for message in run.messages:
        if message.refcount <= 1:
            message.value = None
        else:
            gone = False
    return gone


SCORE_SLICE = 2_048
_device_id, _ts, _metrics = attrgetter("device_id"), attrgetter("ts"), attrgetter("metrics")  # a slice's columns


def _slices(devices: list[tuple[str, list]]) -> list[list[tuple[str, list]]]:
    """Whole devices grouped into slices of about `SCORE_SLICE` readings, last slice first (they are popped)."""
    out: list[list[tuple[str, list]]] = [[]]
    n = 0
    for item in devices:
        if n >= SCORE_SLICE:
            out.append([])
            n = 0
        out[-1].append(item)
        n += len(item[1])
    return out[::-1]


async def send_alerts(alerts: list[Alert]) -> list[asyncio.Future]:
    """Produce alarm events keyed by alarm_id, in order; returns what confirms them, which the checkpoint that acks
    their source records waits for (`_flush`). Waiting here held the scoring loop a produce round trip per batch with
    an alarm (60-240 ms at 5,000 readings/s on a busy machine), and every later reading, alarms included, behind it."""
    return [await topics["topic_alerts"].send(key=a.alarm_id.encode(), value=a.model_dump_json().encode()) for a in alerts]


async def _flush(sent: list[asyncio.Future]) -> None:
    """A checkpoint's flush, before it acks anything: the alarm events of its records confirmed by Kafka (one that
    failed fails the checkpoint: the worker stops, its records unacked), and every score row up to it stored."""
    await asyncio.gather(*sent)
    await scores_writer().flush()


def scores_writer():  # noqa: ANN201
    return storage.writer("anomaly_scores", settings.topic_sensor_readings)


owner = Owner()


async def checkpoint_when_many(ckpt: Checkpoint, in_flight: Callable[[], Awaitable[Any] | None],
                               start: Callable[[], Any], limit: int = MAX_WAITING) -> None:
    """A checkpoint once `limit` applied records are in none yet: the offsets (and memory) must not wait for the timer.
    It waits for the checkpoint being written only when the next is due meanwhile (at most one behind, so at most
    twice `limit` records wait; the one waited for is hurried: `Checkpoint.hurry`). Counting the records being written
    too made every batch after the one that started a checkpoint wait for its writes and its 100,000 acks: 1.4 s
    every 20 s at 5,000 readings/s, the alarms' p99."""
    if ckpt.held_records >= limit:
        if (writing := in_flight()) is not None:
            ckpt.hurry()
            await writing
        start()


@app.batch_agents.agent(device_sources, name="wharf.score-devices", max_records=BATCH, within=WITHIN)
async def score_devices(agent):  # noqa: ANN001 - streams.runtime.batches.BatchAgent
    async for events in agent.batches():
        counts.records["sensors"] += len(events)
        async with owner.lock:
            recs = []
            fresh = []  # acked per batch (`OrderedAcker.track_batch`)
            includes, loaded = owner.marks.includes, owner.loaded_partitions
            restored = owner.marks.restored  # (the dict, kept up to date) empty: nothing to skip, no call per record
            for event in events:
                m = event.message
                if m.partition not in loaded:
                    owner.ensure_partition(m.partition)
                if restored and includes(m.topic, m.partition, m.offset):  # in the restored state, its row stored
                    owner.acker.track(event)()  # acked now (after the earlier records of its partition)
                    continue
                recs.append(m)
                fresh.append(event)
            try:
                await owner.apply(recs, owner.acker.track_batch(fresh))
                await checkpoint_when_many(owner.ckpt, owner.in_flight, owner.checkpoint_behind)
                owner.in_flight()  # a checkpoint that failed stops the worker, as it did when written here
            except Exception:
                log.exception("scoring failed; stopping the worker")  # the agent supervisor stops it (streams/runtime/app.py)
                raise


@app.timer(1.0)
async def sensor_housekeeping() -> None:
    """Silence checks and held values let go every second; a checkpoint every `sensor_checkpoint_seconds`."""
    if app.rebalancing or app.in_recovery or not app.tables.recovery.completed.is_set():
        return
    async with owner.lock:
        await owner.load_owned()
        await owner.check_silence()
        owner.let_go()
        due = time.monotonic() - owner.ckpt.since >= settings.sensor_checkpoint_seconds
        if due and owner.in_flight() is None and (owner.dirty or owner.ckpt.waiting()):
            owner.checkpoint_behind()


@app.on_partitions_revoked.connect
async def _checkpoint_on_revoke(app_: Any, revoked: set, **kwargs: Any) -> None:
    """Partitions move: write their state now so the next owner continues from here."""
    async with owner.lock:
        try:
            await asyncio.wait_for(owner.checkpoint(), timeout=REVOKE_CHECKPOINT_TIMEOUT)
        except Exception:  # noqa: BLE001 - the records after the last checkpoint are unacked: the next owner gets them
            log.exception("checkpoint on revoke failed; the next owner re-learns from the previous checkpoint")
        owner.acker.forget({tp for tp in revoked})
        owner.ckpt.forget({tp.partition for tp in revoked})
        owner.forget()


def _devices() -> dict[str, Any]:
    """`/sensors/devices`: the devices this worker owns, learned readings, active alarms."""
    return {
        "devices": {d: {"partition": st.partition, "learned": owner.bank.learned(d), "readings": st.monitor.n,
                        "active": {t: a.status for t, a in st.monitor.alarms.active.items()}}
                    for d, st in owner.devices.items()},
        "checkpoints": owner.checkpoints, "waiting_for_checkpoint": owner.ckpt.waiting(), "duplicates": owner.duplicates,
        "dead_lettered": owner.dead_lettered,
    }


lent.devices = _devices


async def _checkpoint_at_stop() -> None:
    """The worker stops or a rebalance begins (`streams/runtime/stopping.py`): what was applied is checkpointed and
    acked now, not read again by the next owner. At a rebalance Faust waits for these acks before it revokes
    (`WharfApp._consumer_wait_empty`), and `sensor_housekeeping` rests meanwhile: without this the wait never ended."""
    async with owner.lock:
        if owner.ckpt.waiting() or owner.dirty or owner.in_flight() is not None:
            await owner.checkpoint()


app.on_stopping.append(_checkpoint_at_stop)
app.on_revoking.append(_checkpoint_at_stop)
