"""Batched delivery: the records of chosen topics reach their agents as lists, past Faust's per-record path.

A Faust agent's record goes through the conductor (an `Event` per record, put in the queue of every
subscribed channel) and then the agent's `Stream` (sensors, the current event, the take buffer): on
this 2-core machine, two no-op agents on the clicks topic reach about 6-7k records/s (`wharf bench
commerce`, "Faust alone"), less than the recommender alone learns. A `BatchAgent` takes the fetched
records straight from the consumer's fetch (`getmany`) into a list, and its loop gets them in batches.

Faust still subscribes, fetches, rebalances, commits and keeps the tables' changelogs. What a batch
agent keeps of a Faust agent's contract:
- every batch agent of a topic gets each of its records; an offset is committable once all of them
  acked the record (`Message.incref`, as the conductor does), acked through the same `Event.ack`;
- a record is tracked as unacked (what Faust waits for on rebalance and shutdown, `stream_wait_empty`)
  once its agent takes it; taken events are real Faust events (`as_event` works with them);
- the buffers are cleared when flow control is (a rebalance: the records are read again by whoever
  owns the partition next), and records of an older consumer generation are dropped when taken, as
  Faust's `Stream` does; such a record keeps that agent's reference, so it is never acked nor committed,
  and once every agent that took it acked it, it leaves Faust's set of unacked records (`BatchRouter.given_up`):
  the rebalance's wait for acks would wait for it for ever otherwise (an agent's last batch stays referenced by
  its suspended loop, so the garbage collector Faust relies on does not take it out);
- a full buffer blocks the delivery, so the consumer stops fetching (backpressure); that wait runs
  under Faust's rebalance guard (`streams/runtime/fastpath.py` asks `would_block`); an agent takes no batch
  while the producer's buffer is over its limit (the conductor's `wait_until_producer_ebb`);
- an agent that raises stops the worker (a failed app task crashes the app; `WharfApp.on_batch_agent_error`),
  as `agent_supervisor` does for Faust agents.

A topic may have a decoder (`BatchRouter.decode`): its records reach the agents as what the decoder made of
them, computed by the first agent that takes the record and shared with the others (the clicks are validated
once for the raw storage and the recommender, the readings once for the raw storage and the scoring agent).

A topic read by a batch agent must have no Faust agent: its records never reach Faust's channels.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from time import monotonic
from typing import Any
from weakref import WeakKeyDictionary

from faust.events import Event

from streams.runtime.slices import Slice

log = logging.getLogger(__name__)

AgentFun = Callable[["BatchAgent"], Awaitable[None]]


class BatchAgent:
    """The records of some topics, delivered in batches of up to `max_records` (or what `within` seconds gave)."""

    def __init__(self, app: Any, topics: tuple[Any, ...], name: str, fun: AgentFun, *,
                 max_records: int, within: float, max_buffered: int, decoders: dict[str, Callable[[Any], Any]],
                 given_up: WeakKeyDictionary | None = None) -> None:
        for topic in topics:
            if topic.value_serializer != "raw" or topic.key_serializer != "raw":
                raise ValueError(f"batch agent {name}: topic {topic.get_topic_name()} must be raw bytes (Faust decodes no record of a batch agent; see `BatchRouter.decode`)")
        self.app = app
        self.topics = topics
        self.decoders = decoders  # the router's (`BatchRouter.decode`), by topic name; filled before any record
        self.given_up = WeakKeyDictionary() if given_up is None else given_up  # the router's (`BatchRouter.given_up`)
        self.topic_names = {name for topic in topics for name in topic.topics}
        self.name = name
        self.fun = fun
        self.max_records = max_records
        self.within = within
        self.max_buffered = max_buffered
        self.delivered = 0
        self.taken = 0
        self.dropped_stale = 0  # of an older consumer generation when taken
        self.cleared = 0  # in the buffer when a rebalance cleared it
        self._buffer: list[Any] = []
        self._first_in = 0.0  # when the oldest buffered record arrived
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()  # max_records buffered
        self._space = asyncio.Event()
        self._space.set()

    # --- the consumer's side --------------------------------------------------------------------------
    def would_block(self) -> bool:
        return len(self._buffer) >= self.max_buffered

    async def put(self, message: Any) -> None:
        while len(self._buffer) >= self.max_buffered:
            self._space.clear()
            await self._space.wait()
        self.put_nowait(message)

    def put_nowait(self, message: Any) -> None:
        """Append a record; the caller checked `would_block` (the buffer may pass `max_buffered` otherwise)."""
        buffer = self._buffer
        if not buffer:
            self._first_in = monotonic()
            self._arrived.set()
        buffer.append(message)
        self.delivered += 1
        if len(buffer) >= self.max_records:
            self._full.set()

    def clear(self) -> None:
        """Flow control cleared the queues (a rebalance): nothing buffered was taken, so nothing is tracked."""
        self.cleared += len(self._buffer)
        self._give_up(self._buffer)
        self._buffer = []
        self._space.set()

    def _give_up(self, messages: Iterable[Any]) -> None:
        """This agent will never ack these records: its reference on each is counted as given up."""
        given_up = self.given_up
        for message in messages:
            given_up[message] = given_up.get(message, 0) + 1

    # --- the agent's side -----------------------------------------------------------------------------
    async def batches(self) -> AsyncIterator[list[Event]]:
        """Batches of events in delivery order (per partition in offset order); acks are the agent's."""
        app = self.app
        flow = app.flow_control
        consumer = app.consumer
        decoders = self.decoders
        while True:
            if not self._buffer:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            wait = self._first_in + self.within - monotonic()
            if len(self._buffer) < self.max_records and wait > 0:
                self._full.clear()
                try:
                    await asyncio.wait_for(self._full.wait(), wait)
                except TimeoutError:
                    pass
                continue
            if not flow.is_active():
                await flow.acquire()  # a rebalance: resuming clears the buffer
                continue
            producer = app.producer.buffer
            if producer.size > producer.max_messages:  # Faust's conductor waits so per record; once per batch here
                await producer.wait_until_ebb()
                continue
            taken = self._buffer[:self.max_records]
            del self._buffer[:self.max_records]
            self._first_in = monotonic()
            self._space.set()
            generation = app.consumer_generation_id
            events = []
            work = Slice()
            for k, message in enumerate(taken):
                # requests are answered meanwhile; a rebalance may have begun (asked every 16 records: ~0.1 ms)
                if k & 15 == 15 and await work.tick():
                    generation = app.consumer_generation_id
                if message.generation_id != generation:
                    self.dropped_stale += 1
                    self._give_up((message,))
                    continue
                if not message.tracked:
                    message.tracked = True
                    consumer.track_message(message)
                value = message.value
                if type(value) is bytes:  # noqa: E721 - a decoded value is never bytes
                    decode = decoders.get(message.topic)
                    if decode is not None:
                        value = message.value = decode(message)  # the next agent reading it takes this
                events.append(Event(app, message.key, value, message.headers, message))
            self.taken += len(events)
            if events:
                yield events

    async def run(self) -> None:
        for topic in self.topics:
            await topic.maybe_declare()
        try:
            await self.fun(self)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.app.on_batch_agent_error(self.name, exc)
            raise  # a failed app task crashes the app: the worker stops, nothing unacked is committed

    def stats(self) -> dict[str, int]:
        return {"delivered": self.delivered, "taken": self.taken, "buffered": len(self._buffer),
                "dropped_stale": self.dropped_stale, "cleared": self.cleared}


class BatchRouter:
    """Sends the records of batch agents' topics to them and every other record to Faust's conductor."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.agents: list[BatchAgent] = []
        self.by_topic: dict[str, tuple[BatchAgent, ...]] = {}
        self.installed = False
        self.handed_over = 0  # records appended straight from the fetch (the others went through Faust's guarded path)
        self.decoders: dict[str, Callable[[Any], Any]] = {}
        self.given_up: WeakKeyDictionary = WeakKeyDictionary()  # record -> references of agents that never take it

    def agent(self, *topics: Any, name: str, max_records: int, within: float,
              max_buffered: int | None = None) -> Callable[[AgentFun], AgentFun]:
        """Declare `fun(agent)`, a loop over `agent.batches()` started with the app (like `@app.agent`)."""

        def decorate(fun: AgentFun) -> AgentFun:
            if self.installed:
                raise RuntimeError(f"batch agent {name} declared after the consumer was created")
            agent = BatchAgent(self.app, topics, name, fun, max_records=max_records, within=within,
                               max_buffered=max_buffered or 2 * max_records, decoders=self.decoders,
                               given_up=self.given_up)
            self.agents.append(agent)
            for topic_name in agent.topic_names:
                self.by_topic[topic_name] = (*self.by_topic.get(topic_name, ()), agent)
            for topic in topics:
                self.app.topics.add(topic)  # subscribed by Faust's conductor; its channel never gets a record
            self.app.task(agent.run)
            return fun

        return decorate

    def _clean_given_up(self, consumer: Any) -> None:
        """Faust's `_clean_unacked_messages` (run by the waits for acks of a rebalance and a stop) also takes out the
        records whose only references left are given up (`given_up`): every agent that took them acked them, the
        others never will. They stay unacked, so not committed: the next owner reads them again."""
        faust_clean = consumer._clean_unacked_messages  # noqa: SLF001
        given_up = self.given_up

        def clean() -> None:
            faust_clean()
            if given_up:
                consumer._unacked_messages -= {m for m in consumer._unacked_messages  # noqa: SLF001
                                               if m.refcount <= given_up.get(m, 0)}

        consumer._clean_unacked_messages = clean  # noqa: SLF001

    def decode(self, topic: Any, decoder: Callable[[Any], Any]) -> None:
        """Records of `topic` reach its batch agents as `decoder(message)` (not bytes), decoded once for all of them."""
        if self.installed:
            raise RuntimeError(f"decoder of {topic.get_topic_name()} declared after the consumer was created")
        for name in topic.topics:
            self.decoders[name] = decoder

    def install(self, consumer: Any) -> None:
        """Take over the consumer's callback (`WharfApp._new_consumer`: `Consumer._drain_messages` reads it once)."""
        if self.installed:
            return
        self.installed = True
        if not self.agents:
            return
        app = self.app
        faust_callback = consumer.callback
        self._clean_given_up(consumer)
        flow = app.flow_control
        by_topic = self.by_topic
        for agent in self.agents:
            flow.manage_queue(agent)  # cleared with Faust's channel queues
        self._check_no_faust_agents()

        async def on_message(message: Any) -> None:  # `message`: the name streams/runtime/fastpath.py looks for
            agents = by_topic.get(message.topic)
            if agents is None:
                return await faust_callback(message)
            if not flow.is_active():
                await flow.acquire()
            message.incref(len(agents))
            for agent in agents:
                await agent.put(message)
            return None

        consumer.callback = on_message
        consumer.getmany = self._handing_over(consumer, on_message)
        consumer.batch_router = self

    def _handing_over(self, consumer: Any, deliver: Any) -> Any:
        """Faust's `getmany`, with each record of a batch agent's topic handed to its agents' buffers here.

        Faust's drain loop (`Consumer._drain_messages`) takes each fetched record through `wait_first(callback(record),
        suspend_flow.wait())`: several coroutines per record, about a sixth of what delivering a click cost. A record with room
        in its buffers is appended at once, with the drain loop's own bookkeeping for it (read offset, gap, periodic
        commit, here beside the fetch: `_commit_beside`); one that would wait (flow suspended, a buffer full) goes
        through that guarded path, as before. Other records are passed on to Faust's loop unchanged.

        The fetch itself is Faust's `Consumer.getmany` step for step (`_fetched`), less two things per record: its
        async generator's hop, and asking the partition's high-water mark and telling the monitor (`highwater`,
        `track_tp_end_offset`), done here once per partition and fetch (~1 us a record in a catch-up).
        `tests/test_patches.py` fails if Faust's `getmany` changes."""
        by_topic = self.by_topic
        flow = self.app.flow_control
        read_offset = consumer._read_offset  # noqa: SLF001 - Faust's drain loop keeps it per record; so must this one
        acks_enabled_for = self.app.topics.acks_enabled_for
        commit_every = consumer._commit_every  # noqa: SLF001
        suspend_flow = consumer.suspend_flow
        app = self.app
        # per partition: (consumer generation, first offset) of records fetched and not passed on (`_not_passed`)
        undelivered: dict[Any, tuple[int, int]] = {}
        fetched = _fetched(app, consumer, undelivered)
        reread: dict[Any, int] = {}  # per partition: the offset it was last sought back to (`_seek_back`)
        committing: list[asyncio.Future | None] = [None]  # the commit `_commit_beside` started last

        async def getmany(timeout: float) -> Any:
            work = Slice()
            n = 0
            held_back: set[Any] = set()  # partitions sought back in this fetch: their later records are dropped
            for tp, message in await fetched(timeout):
                if message is None:
                    break  # flow stopped, or a rebalance began: the rest of the fetch is dropped, as Faust's loop does
                offset = message.offset
                r_offset = read_offset[tp]
                if undelivered:
                    hole = _hole(offset, r_offset, _first_undelivered(undelivered, tp, r_offset, app.consumer_generation_id))
                else:
                    hole = r_offset if r_offset and offset - r_offset > 1 else None
                if hole is not None and acks_enabled_for(message.topic):
                    if tp in held_back:
                        continue
                    if reread.get(tp) != hole:
                        held_back.add(tp)
                        await _seek_back(consumer, tp, offset, hole, reread)
                        continue
                    undelivered.pop(tp, None)  # still there after seeking back to it: a real gap
                agents = by_topic.get(tp.topic)
                if agents is None:
                    yield tp, message
                    continue
                if r_offset is not None and offset < r_offset:
                    continue  # read already (Faust's loop drops these the same way)
                if hole is not None and r_offset and offset - r_offset > 1 and acks_enabled_for(message.topic):
                    await consumer._add_gap(tp, r_offset + 1, offset)  # noqa: SLF001 - a real gap (`_seek_back`)
                if commit_every is not None and consumer._n_acked >= commit_every:  # noqa: SLF001
                    consumer._n_acked = 0  # noqa: SLF001
                    _commit_beside(consumer, committing)
                for agent in agents:
                    if agent.would_block():
                        room = False
                        break
                else:
                    room = True
                if room and flow.is_active() and not suspend_flow.is_set():
                    message.incref(len(agents))
                    for agent in agents:
                        agent.put_nowait(message)
                    self.handed_over += 1
                else:
                    await consumer.wait_first(deliver(message), suspend_flow.wait())
                read_offset[tp] = offset
                n += 1
                if n & 15 == 0:  # Faust's loop yields every 100 records; requests are answered meanwhile
                    await work.tick()

        return getmany

    def would_block(self, message: Any) -> bool:
        return any(agent.would_block() for agent in self.by_topic.get(message.topic, ()))

    def _check_no_faust_agents(self) -> None:
        for agent in self.app.agents.values():
            shared = set(getattr(agent.channel, "topics", ())) & self.by_topic.keys()
            if shared:
                raise RuntimeError(f"Faust agent {agent.name} reads {sorted(shared)}, which batch agents read")

    def stats(self) -> dict[str, dict[str, int]]:
        return {agent.name: agent.stats() for agent in self.agents}


def _hole(offset: int, r_offset: int | None, first_undelivered: int | None) -> int | None:
    """Where a hole before the record at `offset` begins, or None: after the partition's read offset (what was
    passed on), or at a record fetched earlier and not passed on that the read offset has not reached."""
    if first_undelivered is not None and offset > first_undelivered:
        return first_undelivered if r_offset is None else min(first_undelivered, r_offset)
    if r_offset and offset - r_offset > 1:
        return r_offset
    return None


def _first_undelivered(undelivered: dict[Any, tuple[int, int]], tp: Any, r_offset: int | None, generation: int) -> int | None:
    """The partition's first record fetched and not passed on in this consumer generation, unless the read offset
    has reached it since (passed on, or sought to by Faust); forgotten then, and after a rebalance (a new assignment
    reads from the committed offsets)."""
    noted = undelivered.get(tp)
    if noted is None:
        return None
    if noted[0] != generation or (r_offset is not None and r_offset >= noted[1]):
        del undelivered[tp]
        return None
    return noted[1]


async def _seek_back(consumer: Any, tp: Any, offset: int, target: int, reread: dict[Any, int]) -> None:
    """A record lies past a hole (`_hole`): seek its partition back to read the hole first (the caller drops the
    rest of the fetch for it).

    Faust's drain loop (and this module's, after it) takes a jump past the read offset for a gap with nothing in it
    (compaction, transaction markers) and commits past it; nor does it notice records it dropped while a fetch was
    under way (its flow stopped, the partition paused meanwhile), whose offsets the consumer's position has passed.
    On these topics such holes are what a race in Faust's recovery leaves: it resumes the partitions, then seeks them
    to their committed offsets while fetches are under way. A worker that took partitions in a rebalance dropped one
    fetch, was handed the next (offset 193 after a read offset of 171, or 124 with none yet after dropping 114-123),
    and when the seek's re-fetch brought the hole's records they counted as read already, or reached the writers
    after a higher offset, whose high-water mark then takes them for copies. Their rows were never stored and their
    offsets were committed (`test_two_workers_share_devices_and_state_moves_on_stop`, 3 runs of about 90, 7 Dec).
    A hole still there once the partition was sought back to the same offset (`reread`) is a real gap, and goes on
    to Faust's gap handling."""
    reread[tp] = target
    try:
        await consumer.seek(tp, target)  # a record at the target may come again: every agent skips a copy
    except Exception as exc:  # noqa: BLE001 - e.g. revoked meanwhile: its next owner reads from the committed offset
        log.warning("%s[%d]: offset %d came after a hole at %d; seeking back failed (%r)", tp.topic, tp.partition, offset, target, exc)
    else:
        log.warning("%s[%d]: offset %d came after a hole at %d; sought back to read it first", tp.topic, tp.partition, offset, target)


def _not_passed(undelivered: dict[Any, tuple[int, int]], generation: int, tp: Any, offset: int) -> None:
    """Note a record fetched and dropped (kept lowest per partition and consumer generation): the consumer's
    position has passed it, and a later record of the partition must not be passed on before it (`_hole`)."""
    noted = undelivered.get(tp)
    if noted is None or noted[0] != generation or offset < noted[1]:
        undelivered[tp] = (generation, offset)


def _fetch_dropped(undelivered: dict[Any, tuple[int, int]], generation: int, records: Any) -> None:
    """A fetch dropped from where it stands: each partition's first record (the read offset tells which of a
    partition's records were passed on before)."""
    for tp, recs in records.items():
        if recs:
            _not_passed(undelivered, generation, tp, recs[0].offset)


def _commit_beside(consumer: Any, running: list[asyncio.Future | None]) -> None:
    """Commit the acked offsets beside the fetch, one commit at a time. Faust's drain loop commits every
    `broker_commit_every` acks inline, with the fetch waiting: a checkpoint that releases 100,000 acks at once made
    that five or six commits in a row (a producer flush and a Kafka round trip each, 20-260 ms) while no record
    reached the agents, which held a 5,000/s load's readings back up to 0.8 s every 20 s (`wharf bench sensors`).
    One under way commits what was acked when it began; the next threshold or Faust's commit timer (which also runs
    beside the fetch) commits the rest. A commit that fails crashes the consumer, as it did from the drain loop."""
    task = running[0]
    if task is not None and not task.done():
        return

    def done(task: asyncio.Future) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("a commit failed: %r; stopping the consumer", exc)
            running[1:] = [asyncio.ensure_future(consumer.crash(exc))]  # kept referenced until it ran

    running[0] = task = asyncio.ensure_future(consumer.commit())
    task.add_done_callback(done)


def _fetched(app: Any, consumer: Any, undelivered: dict[Any, tuple[int, int]]) -> Callable[[float], Awaitable[Iterable[tuple[Any, Any]]]]:
    """`fetched(timeout)`: the records of one fetch as (tp, message), made as Faust's `Consumer.getmany` makes them,
    lazily: a record is made only when the one before it has been handled, and the iteration yields (tp, None) and
    ends once the flow stops or the consumer generation changes, where Faust's generator stops. A partition's
    high-water mark goes to the monitor once per fetch (Faust: per record)."""
    to_message = consumer._to_message  # noqa: SLF001

    async def fetched(timeout: float) -> Iterable[tuple[Any, Any]]:
        records, active_partitions = await consumer._wait_next_records(timeout)  # noqa: SLF001
        generation_id = app.consumer_generation_id
        if records is None or consumer.should_stop:
            return ()
        if not consumer.flow_active:
            consumer.log.dev("getmany called while flow not active. Seek back to committed offsets.")
            try:
                await consumer.perform_seek()
            except Exception as ex:  # noqa: BLE001 - as Faust's getmany
                consumer.log.warning(f"exception performing seek when flow not active {ex}")
            _fetch_dropped(undelivered, generation_id, records)  # the seek leaves a partition without a commit as is
            return ()
        return _messages(app, consumer, records, active_partitions, generation_id, to_message, undelivered)

    return fetched


def _messages(app: Any, consumer: Any, records: Any, active_partitions: Any, generation_id: int,
              to_message: Callable[[Any, Any], Any], undelivered: dict[Any, tuple[int, int]]) -> Iterable[tuple[Any, Any]]:
    told: set[Any] = set()
    for tp, record in consumer.scheduler.iterate(records):
        if not consumer.flow_active or app.consumer_generation_id != generation_id:
            _fetch_dropped(undelivered, generation_id, records)
            yield tp, None
            return
        if active_partitions is None or tp in active_partitions or tp in consumer._buffered_partitions:  # noqa: SLF001
            if tp not in told:
                told.add(tp)
                app.monitor.track_tp_end_offset(tp, consumer.highwater(tp))
            yield tp, to_message(tp, record)
        else:  # paused since the fetch: dropped, as by Faust
            _not_passed(undelivered, generation_id, tp, record.offset)
