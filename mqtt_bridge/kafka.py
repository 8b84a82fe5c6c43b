"""The bridge's Kafka side: starting a client that must wait for Kafka (the bridge's producer, the alerts
publisher's consumer), and batching the bridge's records per partition."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

log = logging.getLogger("wharf.bridge")


async def start_when_reachable(client: Any, what: str, max_delay: float = 30.0) -> None:
    """`await client.start()`, retrying with capped exponential backoff while Kafka cannot be reached."""
    delay = 0.5
    while True:
        try:
            await client.start()
            return
        except KafkaError as exc:
            log.warning("%s: Kafka not reachable (%s); retrying in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)


class NotSent(KafkaError):
    """A batch that never reached Kafka: its producer was replaced and stopped first, or `send_batch` raised for
    it (aiokafka raises there what befell the batch before it). Not the records' fault: send them again."""

    retriable = True


@dataclass(eq=False)
class _Handover:
    """One producer and the batches handed to it. Why: aiokafka checks that a producer is closed only on entering
    `send_batch`, and a batch accepted after its stop began is never sent nor settled, so a producer is stopped
    only once no `send_batch` on it is under way, and what it leaves unsettled is reported not sent."""

    producer: AIOKafkaProducer
    entering: int = 0  # `send_batch` calls under way
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    unsettled: set[asyncio.Future] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.idle.set()


@dataclass
class _Batch:
    builder: Any  # aiokafka's BatchBuilder
    items: list = field(default_factory=list)
    sealed: bool = False  # takes no more records (full, or one record sent alone)


class RecordBatches:
    """Records gathered into one aiokafka batch per topic-partition and handed to the producer with `send_batch`.

    Why: `producer.send` costs a coroutine, a partitioner call (pure-Python murmur2) and a future per record;
    here a record costs one append to a batch builder, and a batch one future and one callback. A partition's
    batch is handed over when its previous one has left for Kafka, so batches grow while Kafka is busy. Records
    keep their order per partition. `delivered(items, error)` is called once per batch: error None when Kafka
    confirmed every record of it (acks=all), else the exception for all of them.
    """

    def __init__(self, producer: AIOKafkaProducer, delivered: Callable[[list, BaseException | None], None],
                 make_producer: Callable[[], Awaitable[AIOKafkaProducer]]):
        self._handover = _Handover(producer)
        self._make_producer = make_producer
        self._renewing: asyncio.Task | None = None
        self._delivered = delivered
        self._partitioner = DefaultPartitioner()
        self._queues: dict[tuple[str, int], deque[_Batch]] = {}
        self._submitting: set[tuple[str, int]] = set()
        # topic -> (partitions, key -> (its topic-partition, that partition's queue)): one lookup a record
        self._placement: dict[str, tuple[list[int], dict[bytes, tuple[tuple[str, int], deque[_Batch]]]]] = {}
        self._unplaced: dict[str, list[tuple[bytes, bytes, Any, bool]]] = {}  # topics whose partitions are not known yet
        self._tasks: set[asyncio.Task] = set()

    @property
    def producer(self) -> AIOKafkaProducer:
        """The producer that takes new batches."""
        return self._handover.producer

    def refresh(self) -> None:
        """Forget a topic's key -> partition choices when its partition count changed (metadata refresh)."""
        cluster = self.producer.client.cluster
        for topic, (parts, _) in list(self._placement.items()):
            now = cluster.partitions_for_topic(topic)
            if now is None or len(now) != len(parts):
                del self._placement[topic]

    def add(self, topic: str, key: bytes, value: bytes, item: Any, alone: bool = False) -> None:
        """Queue one record; `alone`: in a batch of its own (to learn which record Kafka refuses)."""
        placed = self._placement.get(topic)
        if placed is None:
            parts = self.producer.client.cluster.partitions_for_topic(topic)
            if not parts or topic in self._unplaced:  # metadata first, then in order
                self._unplaced.setdefault(topic, []).append((key, value, item, alone))
                if len(self._unplaced[topic]) == 1:
                    self._spawn(self._place(topic))
                return
            placed = self._placement[topic] = (sorted(parts), {})
        spot = placed[1].get(key)
        if spot is None:
            tp = (topic, self._partitioner(key, placed[0], placed[0]))
            spot = placed[1][key] = (tp, self._queues.setdefault(tp, deque()))
        tp, queue = spot
        if alone or not queue or queue[-1].sealed:
            queue.append(_Batch(self.producer.create_batch(), sealed=alone))
        batch = queue[-1]
        if batch.builder.append(timestamp=None, key=key, value=value) is None:  # full: the next batch takes it
            batch.sealed = True
            batch = _Batch(self.producer.create_batch())
            queue.append(batch)
            batch.builder.append(timestamp=None, key=key, value=value)  # an empty batch takes any one record
        batch.items.append(item)
        if tp not in self._submitting:
            self._submitting.add(tp)
            self._spawn(self._submit(tp))

    async def _place(self, topic: str) -> None:
        try:
            if self._renewing is not None:
                await asyncio.shield(self._renewing)
            await self.producer.partitions_for(topic)  # waits for the topic's metadata
        except Exception as exc:  # noqa: BLE001 - the records fail like a refused batch; the caller decides
            records = self._unplaced.pop(topic, [])
            self._delivered([item for _, _, item, _ in records], exc)
            return
        for key, value, item, alone in self._unplaced.pop(topic, []):
            self.add(topic, key, value, item, alone)

    async def _submit(self, tp: tuple[str, int]) -> None:
        queue = self._queues[tp]
        try:
            while queue:
                if self._renewing is not None:
                    await asyncio.shield(self._renewing)
                batch = queue.popleft()
                batch.sealed = True
                batch.builder.close()
                handover = self._handover
                handover.entering += 1
                handover.idle.clear()
                try:  # waits while the partition's previous batch is still queued in the producer
                    fut = await handover.producer.send_batch(batch.builder, tp[0], partition=tp[1])
                except Exception as exc:  # noqa: BLE001 - reported for the batch's records
                    if handover is self._handover:
                        self.renew()  # a producer whose sender failed takes no batch again
                    self._delivered(batch.items, NotSent(f"not handed to Kafka: {exc!r}"))
                    continue
                finally:
                    handover.entering -= 1
                    if not handover.entering:
                        handover.idle.set()
                handover.unsettled.add(fut)
                fut.add_done_callback(handover.unsettled.discard)
                fut.add_done_callback(lambda f, items=batch.items: self._delivered(
                    items, f.exception() if not f.cancelled() else NotSent("its producer stopped before sending it")))
        finally:
            self._submitting.discard(tp)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def renew(self) -> None:
        """Hand later batches to a fresh producer. Why: when Kafka refuses a batch for good (too large, ...), the
        idempotent producer has already counted its records in the partition's sequence, so Kafka refuses every
        later batch of that partition as out of order; a new producer starts a new sequence. The old one is
        stopped once no `send_batch` on it is under way: what it holds settles as delivered or failed, what it
        leaves unsettled is reported `NotSent`, and failed records are sent again."""
        if self._renewing is None:
            self._renewing = asyncio.get_running_loop().create_task(self._renew())
            self._tasks.add(self._renewing)  # cancelled at a stop, as long as it runs
            self._renewing.add_done_callback(self._tasks.discard)

    async def _renew(self) -> None:
        old = self._handover
        try:
            self._handover = _Handover(await self._make_producer())
        finally:
            self._renewing = None
        try:
            await asyncio.wait_for(old.idle.wait(), 30)  # each ends once Kafka takes the batch before it, or times out
            await asyncio.wait_for(old.producer.stop(), 10)
        except Exception as exc:  # noqa: BLE001 - the old producer is gone either way
            log.warning("the replaced Kafka producer did not stop cleanly (%r)", exc)
        for fut in list(old.unsettled):
            fut.cancel()  # its callback reports the batch not sent

    def cancel(self) -> None:
        """Stop handing batches over (at the bridge's stop): what was not confirmed is not acked."""
        for task in list(self._tasks):
            task.cancel()
