"""Sensor path: anomaly scores and alarms per device, checkpointed and restored with their partitions.
`score_devices` consumes readings, device status and operator commands together.
All three topics are keyed by device_id with the same partition count, so one
device's events land on one partition number everywhere, and the worker that owns
that partition owns the device: its anomaly model (a row of the owner's `DeviceBank`),
its alarms and its de-duplication window (a `DeviceState`).

Hot path, per batch (`noack_take`): parse, drop exact duplicates (device_id, seq, ts),
score the readings of every device of the batch in one call (`score_batch`: score first, then learn), run the
alarm conditions in event order, produce alarm events (Kafka confirms them), then
hand one `anomaly_scores` row per reading to the writer, which acks the reading
once the row is stored. The writer keys exactly-once on the readings partition/offset.

State survives restarts and rebalances through the `sensor-state` table's changelog
(compacted Kafka topic, one record per device, written with `send_changelog` to the
device's partition): every `sensor_checkpoint_seconds` and whenever partitions are
revoked, the worker first flushes the score writer (so every score up to the
checkpoint is in ClickHouse), then writes each changed device's state (`schemas.state`) and one
marker per partition with the last offset the state includes, per topic. A worker that
gets the partition (a restart, or another worker after a rebalance) restores that state;
records at or below the marker are already in it and are skipped.

What a crash (kill -9) loses: the model and alarm updates since the last checkpoint,
but not for good. Offsets are committed as soon as the scores are stored, so they can
run ahead of the checkpoint; the new owner first re-reads the records between the
checkpoint and the committed offset straight from Kafka and re-learns them (no rows,
no alarm events: those were stored and sent the first time), then continues with the
committed offset. Alarm ids and revisions depend on event times only, so the replay
reproduces them; the only wall-clock alarm (silence) may be raised once more.
"""

from __future__ import annotations

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from online_models.alarms import source_of
from online_models.sensing import score_batch
from schemas import codec
from schemas.events import Alert, DeviceStatus, SensorReading, to_epoch
from schemas.state import StateFormatError
from schemas.validation import InvalidEvent, parse, processing_error
from streams.runtime import counts
from streams.runtime.acks import OrderedAcker
from streams.runtime.app import app, device_sources, limits, settings, storage, topics
from streams.runtime.kafka_auth import kafka_client
from streams.sinks.ingest import produce_dead_letter
from streams.web.registry import lent
from agents.devices import RULES, SETUP, DeviceState

log = logging.getLogger(__name__)

BATCH = settings.sink_batch_rows
WITHIN = min(settings.sink_batch_seconds, 0.05)  # latency: alarms should not wait for a full batch
REVOKE_CHECKPOINT_TIMEOUT = 30.0  # below Faust's broker session timeout
REPLAY_TIMEOUT = 60.0  # re-reading what was committed after a partition's checkpoint


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
        self.done_upto: dict[tuple[str, int], int] = {}  # (topic, partition) -> last offset applied to the state
        self.skip_upto: dict[tuple[str, int], int] = {}  # restored markers: records at or below are in the state
        self.loaded_partitions: set[int] = set()
        self.lock = asyncio.Lock()
        self.last_checkpoint = time.monotonic()
        self.checkpoints = 0
        self.replayed = 0
        self.duplicates = 0
        self.dead_lettered = 0
        self.acker = OrderedAcker()
        self.watermark: float | None = None  # newest event time processed (all owned devices)
        self.last_arrival = time.monotonic()  # wall time of the last reading processed

    # --- restore -------------------------------------------------------------------------------------------
    def _store(self) -> dict:
        return state_table.data.data  # the memory store's dict: key bytes -> value bytes

    async def ensure_partition(self, partition: int, first_offsets: dict[str, int]) -> None:
        """First event of a partition since it was assigned: read its marker and re-learn the gap after it."""
        if partition in self.loaded_partitions:
            return
        self.loaded_partitions.add(partition)
        marks = self._marks(partition)
        for topic, offset in marks.items():
            self.skip_upto[(topic, partition)] = int(offset)
            self.done_upto[(topic, partition)] = int(offset)
        if marks:
            await self._replay_gap(partition, marks, first_offsets)

    def _marks(self, partition: int) -> dict[str, int]:
        raw = self._store().get(marker_key(partition))
        try:
            marks = json.loads(raw) if raw else {}
            if type(marks) is not dict or not all(type(t) is str and type(o) is int for t, o in marks.items()):
                raise ValueError("not {topic: offset}")
        except (ValueError, RecursionError) as exc:
            log.error("%s: offset marker of partition %d refused (%s); the partition starts without one", state_table.name, partition, exc)
            return {}
        return marks

    async def load_owned(self) -> None:
        """Load every device of the partitions we own (recovered from the changelog), not only those that speak:
        a silent device must be noticed by its new owner too."""
        store = state_table.data
        for key, p in list(store._key_partition.items()):
            device_id = key.decode(errors="replace")
            if key.startswith(b"\x00") or device_id in self.devices:
                continue
            await self.ensure_partition(p, {})
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
            st.model = None  # the bank holds it; `checkpoint` extracts it
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

    async def _replay_gap(self, partition: int, marks: dict[str, int], first_offsets: dict[str, int]) -> None:
        """Re-learn records after the checkpoint that were committed before the crash (rows and alarms already out)."""
        group = settings.app_id
        tps = [TopicPartition(t, partition) for t in marks]
        admin = AIOKafkaAdminClient(**kafka_client(settings))
        await admin.start()
        try:
            committed = await admin.list_consumer_group_offsets(group, partitions=tps)
        finally:
            await admin.close()
        ranges = {}
        for tp in tps:
            end = committed.get(tp).offset if committed.get(tp) is not None and committed[tp].offset >= 0 else first_offsets.get(tp.topic, -1)
            start = marks[tp.topic] + 1
            if end > start:
                ranges[tp] = (start, end)
        if not ranges:
            return
        records = await _read_ranges(ranges)
        missing = sum(end - start for start, end in ranges.values()) - len(records)
        if missing:  # deleted by retention while no worker owned the partition
            log.error("partition %d: %d records committed after its last checkpoint are no longer in Kafka; "
                      "its devices' models never learn them", partition, missing)
        records.sort(key=lambda m: m.timestamp)
        for m in records:
            await self.apply([DeviceRecord(m.topic, m.partition, m.offset, m.timestamp / 1000.0, m.value)], emit=False)
        self.replayed += len(records)
        log.warning("partition %d: re-learned %d records committed after its last checkpoint", partition, len(records))

    # --- the work ----------------------------------------------------------------------------------------
    async def apply(self, recs: list[DeviceRecord], emit: bool = True, dones: list | None = None) -> None:
        """Apply records in order. With emit=False (replay) nothing leaves the process.

        No record can stop the path: one that is invalid, or breaks its device's model or the alarm step, becomes a
        dead letter (Kafka confirms it before the record is acked) and the others go on."""
        readings: dict[str, list[tuple[int, SensorReading]]] = defaultdict(list)
        parsed: list[tuple[DeviceRecord, Any]] = []
        letters: list[tuple[DeviceRecord, InvalidEvent]] = []
        for i, r in enumerate(recs):
            key = (r.topic, r.partition)
            if r.offset <= self.skip_upto.get(key, -1):
                parsed.append((r, None))  # already in the restored state, its row already stored
                continue
            self.done_upto[key] = max(self.done_upto.get(key, -1), r.offset)
            if r.topic == settings.topic_sensor_readings:
                try:
                    ev = parse(r.value, SensorReading, now=r.kafka_ts, limits=limits)
                except InvalidEvent:
                    parsed.append((r, None))  # dead-lettered by the storage agent
                    continue
                st = self.device(ev.device_id, r.partition)
                if st.is_duplicate(ev.seq, ev.ts):
                    self.duplicates += 1
                    parsed.append((r, None))
                    continue
                readings[ev.device_id].append((i, ev))
                parsed.append((r, ev))
            elif r.topic == settings.topic_device_status:
                try:
                    parsed.append((r, parse(r.value, DeviceStatus, now=r.kafka_ts, limits=limits)))
                except InvalidEvent as exc:  # nothing else stores device status: its dead letter is sent here
                    letters.append((r, exc))
                    parsed.append((r, None))
            else:
                try:
                    parsed.append((r, codec.loads(r.value)))
                except ValueError as exc:
                    letters.append((r, processing_error("sensor_command", "the device owner", exc, r.value)))
                    parsed.append((r, None))
        # models: one batched call for every device of the batch
        results: dict[int, tuple[float, bool, float, str | None]] = {}
        batches = [list(readings.items())]
        while batches:
            batch = batches.pop()
            rows = [(i, ev) for _, items in batch for i, ev in items]
            try:
                scored = score_batch(self.bank, [ev.device_id for _, ev in rows], [ev.ts for _, ev in rows], [ev.metrics for _, ev in rows])
                results.update(zip((i for i, _ in rows), scored, strict=True))
            except Exception as exc:  # noqa: BLE001 - readings that break their device's model are refused, not fatal
                if len(batch) > 1:  # again per device, so that only the device whose readings break it is refused
                    batches += [[item] for item in batch]
                    continue
                device_id, items = batch[0]
                log.exception("device %s: the model failed on %d readings; they are dead-lettered", device_id, len(items))
                for i, _ in items:
                    letters.append((parsed[i][0], processing_error("sensor_reading", "the anomaly model", exc, parsed[i][0].value)))
                    parsed[i] = (parsed[i][0], None)
        self.dirty.update(readings)
        # alarms in event order
        alerts: list[Alert] = []
        score_rows: list[tuple[DeviceRecord, list[dict]]] = []
        for i, (r, ev) in enumerate(parsed):
            if ev is None:
                continue
            try:
                alerts += self._alarms(r, ev, results.get(i), score_rows, emit)
            except Exception as exc:  # noqa: BLE001 - one record's alarm step must not stop the others
                log.exception("%s/%d/%d broke the alarm step; dead-lettered", r.topic, r.partition, r.offset)
                kind = {settings.topic_sensor_readings: "sensor_reading", settings.topic_device_status: "device_status"}.get(r.topic, "sensor_command")
                letters.append((r, processing_error(kind, "the alarm step", exc, r.value)))
        if not emit:
            return
        await send_alerts(alerts)
        letters.sort(key=lambda x: (x[0].topic, x[0].partition, x[0].offset))  # in offset order (`produce_dead_letter`)
        await asyncio.gather(*[await produce_dead_letter(topics["topic_dead_letters"], error, r.value, "kafka",
                                                         keep_bytes=limits.dead_letter_keep_bytes, kafka_topic=r.topic,
                                                         kafka_partition=r.partition, kafka_offset=r.offset)
                               for r, error in letters])
        self.dead_lettered += len(letters)
        if settings.sensor_publish_scores and score_rows:
            futs = [await topics["topic_anomaly_scores"].send(key=row[0]["device_id"].encode(), value=codec.dumps(row[0] | {"v": 1}))
                    for _, row in score_rows]
            await asyncio.gather(*futs)
        # acks: readings once their score row is stored, everything else now (alarm events are confirmed)
        writer = scores_writer()
        by_rec = {id(r): rows_ for r, rows_ in score_rows}
        for r, _ in parsed:
            done = r.done
            if done is None:
                continue
            rows_ = by_rec.get(id(r))
            if rows_ is not None:
                await writer.put(r.partition, r.offset, rows_, done)
            else:
                done()

    def _alarms(self, r: DeviceRecord, ev: Any, result: tuple[float, bool, float, str | None] | None,
                score_rows: list[tuple[DeviceRecord, list[dict]]], emit: bool) -> list[Alert]:
        """One record's alarm step (and, for a reading, its score row); raises for a record it cannot handle."""
        if isinstance(ev, SensorReading):
            st = self.devices[ev.device_id]
            mon = st.monitor
            mon.site, mon.zone, mon.device_type = ev.site, ev.zone, ev.device_type
            score, is_anom, thr, metric = result
            alerts = mon.reading(ev.ts, ev.metrics, RULES, score, is_anom, metric)
            self.watermark = ev.ts if self.watermark is None else max(self.watermark, ev.ts)
            self.last_arrival = time.monotonic()
            if emit:
                value = ev.metrics.get(metric, next(iter(ev.metrics.values()))) if metric else next(iter(ev.metrics.values()))
                score_rows.append((r, [score_row(ev, score, thr, is_anom, metric or next(iter(ev.metrics)), value)]))
            return alerts
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
        a = st.monitor.alarms.ack(str(ev["alarm_id"]), to_epoch(ev.get("ts") or r.kafka_ts), by[:64] if isinstance(by, str) else None)
        return [a] if a else []

    # --- checkpoints ---------------------------------------------------------------------------------------
    async def checkpoint(self, partitions: set[int] | None = None) -> int:
        """Flush the scores, then write changed devices and the offset markers to the changelog; returns devices written."""
        await scores_writer().flush()
        futs = []
        store = self._store()
        written = 0
        for device_id in list(self.dirty):
            st = self.devices.get(device_id)
            if st is None or (partitions is not None and st.partition not in partitions):
                continue
            st.model = self.bank.extract(device_id)
            blob = st.dump()
            st.model = None
            key = device_id.encode()
            futs.append(state_table.send_changelog(st.partition, key, blob))
            store[key] = blob
            state_table.data._key_partition[key] = st.partition  # so Faust drops it locally if the partition moves
            self.dirty.discard(device_id)
            written += 1
        marks: dict[int, dict[str, int]] = defaultdict(dict)
        for (topic, p), offset in self.done_upto.items():
            if partitions is None or p in partitions:
                marks[p][topic] = offset
        for p, m in marks.items():
            value = json.dumps(m).encode()
            if store.get(marker_key(p)) != value:
                futs.append(state_table.send_changelog(p, marker_key(p), value))
                store[marker_key(p)] = value
                state_table.data._key_partition[marker_key(p)] = p
        if futs:
            await app.producer.flush()
            await asyncio.gather(*futs)
        self.last_checkpoint = time.monotonic()
        self.checkpoints += 1
        return written

    def forget(self) -> None:
        """After a rebalance: reload from the (recovered) table, which now holds the latest state of every partition we own."""
        self.devices.clear()
        self.bank = SETUP.new_bank()
        self.dirty.clear()
        self.done_upto.clear()
        self.skip_upto.clear()
        self.loaded_partitions.clear()

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
        await send_alerts(alerts)


async def _read_ranges(ranges: dict[TopicPartition, tuple[int, int]]) -> list[Any]:
    """The records of each partition's [start, end) offsets. An empty fetch does not mean a range is done (a fresh
    consumer's first fetch can take over a second on a busy machine): each is read until its position passes its
    end, for up to `REPLAY_TIMEOUT`; then the worker stops, and its restart reads the ranges again."""
    consumer = AIOKafkaConsumer(**kafka_client(settings), enable_auto_commit=False, group_id=None,
                                auto_offset_reset="earliest")
    await consumer.start()
    records: list[Any] = []
    deadline = time.monotonic() + REPLAY_TIMEOUT
    try:
        consumer.assign(list(ranges))
        for tp, (start, _) in ranges.items():
            consumer.seek(tp, start)
        left = set(ranges)
        while left:
            got = await consumer.getmany(*left, timeout_ms=1000)
            for tp, msgs in got.items():
                records += [m for m in msgs if m.offset < ranges[tp][1]]
            for tp in list(left):
                if await consumer.position(tp) >= ranges[tp][1]:
                    left.discard(tp)
            if left and time.monotonic() > deadline:
                raise TimeoutError(f"re-reading {sorted(f'{tp.topic}/{tp.partition}' for tp in left)} took over {REPLAY_TIMEOUT:.0f} s")
    finally:
        await consumer.stop()
    return records


@dataclass(slots=True)
class DeviceRecord:
    """One record of the device topics as the owner applies it (`done` acks it once its rows are stored)."""

    topic: str
    partition: int
    offset: int
    kafka_ts: float
    value: bytes
    done: Any = None


def score_row(ev: SensorReading, score: float, thr: float, is_anom: bool, metric: str, value: float) -> dict:
    """The `anomaly_scores` row of one reading (same shape as `schemas.rows.anomaly_score`, without a model object)."""
    return {"ts": ev.ts, "site": ev.site, "zone": ev.zone, "device_id": ev.device_id, "device_type": ev.device_type,
            "seq": ev.seq, "metric": metric, "value": float(value), "score": score, "threshold": thr,
            "is_anomaly": int(is_anom), "component_names": [], "component_scores": []}


async def send_alerts(alerts: list[Alert]) -> None:
    """Produce alarm events keyed by alarm_id and wait until Kafka has them (before any source record is acked)."""
    if not alerts:
        return
    futs = [await topics["topic_alerts"].send(key=a.alarm_id.encode(), value=a.model_dump_json().encode()) for a in alerts]
    await asyncio.gather(*futs)


def scores_writer():  # noqa: ANN201
    return storage.writer("anomaly_scores", settings.topic_sensor_readings)


owner = Owner()


@app.agent(device_sources, name="wharf.score-devices")
async def score_devices(stream):  # noqa: ANN001
    async for events in stream.noack_take(BATCH, within=WITHIN):
        counts.records["sensors"] += len(events)
        async with owner.lock:
            recs = []
            firsts: dict[int, dict[str, int]] = defaultdict(dict)
            for event in events:
                m = event.message
                firsts[m.partition].setdefault(m.topic, m.offset)
                recs.append(DeviceRecord(m.topic, m.partition, m.offset, m.timestamp, event.value, owner.acker.track(event)))
            try:
                for p, first in firsts.items():
                    await owner.ensure_partition(p, first)
                await owner.apply(recs)
            except Exception:
                log.exception("scoring failed; stopping the worker")  # the agent supervisor stops it (streams/runtime/app.py)
                raise


@app.timer(1.0)
async def sensor_housekeeping() -> None:
    """Silence checks every second; a checkpoint every `sensor_checkpoint_seconds`."""
    if app.rebalancing or app.in_recovery or not app.tables.recovery.completed.is_set():
        return
    async with owner.lock:
        await owner.load_owned()
        await owner.check_silence()
        if time.monotonic() - owner.last_checkpoint >= settings.sensor_checkpoint_seconds and owner.dirty:
            await owner.checkpoint()


@app.on_partitions_revoked.connect
async def _checkpoint_on_revoke(app_: Any, revoked: set, **kwargs: Any) -> None:
    """Partitions move: write their state now so the next owner continues from here."""
    async with owner.lock:
        try:
            await asyncio.wait_for(owner.checkpoint(), timeout=REVOKE_CHECKPOINT_TIMEOUT)
        except Exception:  # noqa: BLE001 - the next owner replays from the last checkpoint instead
            log.exception("checkpoint on revoke failed; the next owner re-learns from the previous checkpoint")
        owner.acker.forget({tp for tp in revoked})
        owner.forget()


def _devices() -> dict[str, Any]:
    """`/sensors/devices`: the devices this worker owns, learned readings, active alarms."""
    return {
        "devices": {d: {"partition": st.partition, "learned": owner.bank.learned(d), "readings": st.monitor.n,
                        "active": {t: a.status for t, a in st.monitor.alarms.active.items()}}
                    for d, st in owner.devices.items()},
        "checkpoints": owner.checkpoints, "replayed": owner.replayed, "duplicates": owner.duplicates,
        "dead_lettered": owner.dead_lettered,
    }


lent.devices = _devices
