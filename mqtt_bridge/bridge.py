"""The lossless MQTT → Kafka bridge.

A message is acknowledged to Mosquitto (PUBACK) only after Kafka confirmed it
(acks=all, idempotent producer) — or, if it is invalid, after its dead letter was
confirmed. While Kafka is down or slow the bridge stops acknowledging; Mosquitto
holds at most `max_inflight_messages` unacknowledged messages per bridge and
queues the rest in the persistent session (MQTT 3.1.1, clean_session=False:
Mosquitto 2.0 restores those across its own restarts, MQTT 5 sessions it does
not). PUBACKs go out in the order the messages arrived, as MQTT requires, all
those released together in one write. Several bridges (`wharf bridge --processes`)
share the load through a shared subscription (`$share/<group>/...`).

Per message the bridge parses its packet (`wire.py`, a chunk at a time), validates
it once, and appends it to its partition's Kafka batch (`kafka.RecordBatches`):
no task, future or lock per message.

A crash between Kafka's confirmation and the PUBACK makes Mosquitto redeliver:
downstream, readings are identified by (device_id, seq, ts), so such copies are
dropped before storage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError, OutOfOrderSequenceNumber, RequestTimedOutError, UnknownProducerId

from mqtt_bridge import metrics
from mqtt_bridge.connection import bridge_endpoint, ssl_context
from mqtt_bridge.kafka import RecordBatches, start_when_reachable
from mqtt_bridge.stats import BridgeStats
from mqtt_bridge.topics import DeviceTopic, TopicError, parse_topic
from mqtt_bridge.wire import Publish, Session, open_session
from schemas.events import DeviceStatus, SensorReading
from schemas.validation import FieldError, InvalidEvent, Limits, parse, processing_error
from streams.runtime.kafka_auth import kafka_client
from schemas.settings import Settings

log = logging.getLogger("wharf.bridge")

SUBSCRIPTIONS = ("wharf/+/+/+/telemetry", "wharf/+/+/+/status")
# A stop (SIGTERM, SIGINT) ends within 10 s (issue 21): the in-flight wait, the producer's close, the alerts publisher's.
STOP_INFLIGHT_SECONDS = 4.0
STOP_PRODUCER_SECONDS = 2.0
STOP_ALERTS_SECONDS = 2.0
KEEPALIVE_SECONDS = 30
# Messages received and not yet acked beyond which the bridge stops reading the socket (QoS 1 stays within
# Mosquitto's in-flight window of 10,000, `wharf/infra/mosquitto.py`; this bounds a flood of QoS 0 messages while Kafka is slow).
PAUSE_AT = 20_000


@dataclass(slots=True)
class _Pending(Publish):
    """A received message and its way to Kafka: the wire parser builds these directly (one object a message)."""

    session: int = 0  # the connection that delivered it: its PUBACK may go only there
    done: bool = False
    route: tuple[str, bytes, bytes] | None = None  # (Kafka topic, value, key), decided once
    refusals: int = 0  # times Kafka refused its record for good (too large, ...)


def _retriable(exc: BaseException) -> bool:
    """Worth sending again unchanged: Kafka is away or busy. A record Kafka refuses for what it is (too large, ...)
    or a client error about the value is not: it becomes a smaller dead letter instead of blocking the PUBACKs."""
    return isinstance(exc, KafkaError) and bool(getattr(exc, "retriable", False)) or isinstance(exc, KafkaConnectionError | RequestTimedOutError)


# Devices publish on the same few topics over and over: each is checked once (an invalid one raises, uncached).
MAX_ROUTES = 1 << 16


@dataclass(frozen=True, slots=True)
class _Route:
    """What a device topic decides, once per topic: the model its payloads must fit, their Kafka topic and key."""

    where: DeviceTopic
    model: type[SensorReading] | type[DeviceStatus]
    kind: str
    out_topic: str
    key: bytes


def _topic_text(msg: Publish) -> str:
    """The message's topic as text, whatever its bytes."""
    return msg.topic.decode("utf-8", "replace")


class Bridge:
    def __init__(self, settings: Settings, client_id: str = "wharf-bridge-1", share_group: str | None = "wharf-bridge"):
        self.settings = settings
        self.client_id = client_id
        self.share_group = share_group
        self.limits = Limits.from_settings(settings)
        self.stats = BridgeStats()
        self._order: deque[_Pending] = deque()
        self._batches: RecordBatches | None = None
        self._session: Session | None = None
        self._generation = 0
        self._paused = False
        self._connected = asyncio.Event()
        self._lost = asyncio.Event()
        self._stop = asyncio.Event()
        self._retries: set[asyncio.Task] = set()
        self._failing_since: float | None = None  # monotonic time of the first failed batch since one was confirmed
        self._routes: dict[bytes, _Route] = {}  # raw topic -> its route (MAX_ROUTES at most)

    # --- MQTT side ------------------------------------------------------------
    async def _connect(self) -> None:
        self._generation += 1
        generation = self._generation
        self._lost = asyncio.Event()
        host, port = bridge_endpoint(self.settings)
        session = await open_session(host, port, ssl_context(self.settings),
                                     lambda msgs: self._on_messages(generation, msgs), lambda exc: self._on_lost(generation, exc),
                                     message=_Pending)
        self._session = session
        try:
            present = await session.handshake(self.client_id, self.settings.mqtt_bridge_user, self.settings.bridge_password(),
                                              clean=False, keepalive=KEEPALIVE_SECONDS)
            prefix = f"$share/{self.share_group}/" if self.share_group else ""
            await session.subscribe([(prefix + s, 1) for s in SUBSCRIPTIONS])
        except BaseException:
            session.disconnect()
            raise
        self.stats.mqtt_connects += 1
        self._connected.set()
        log.info("MQTT connected (session present: %s)", present)

    def _on_lost(self, generation: int, exc: BaseException | None) -> None:
        if generation != self._generation:
            return
        self._connected.clear()
        self._lost.set()
        self._paused = False
        # Unacked messages are redelivered by Mosquitto on the next connection: forget their acks.
        self._order.clear()
        if not self._stop.is_set():
            log.warning("MQTT disconnected (%s); reconnecting with backoff", exc or "closed by the broker")

    async def _keep_connected(self, ready: asyncio.Event | None) -> None:
        delay = 1.0
        while not self._stop.is_set():
            try:
                await self._connect()
            except (OSError, TimeoutError) as exc:  # MqttError is a ConnectionError
                log.warning("MQTT broker not reachable (%s); retrying in %.0fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)
                continue
            delay = 1.0
            if ready is not None:
                ready.set()
            await self._lost.wait()

    def _on_messages(self, generation: int, msgs: list[_Pending]) -> None:
        """A received chunk's messages, in order: each validated once and appended to its Kafka batch."""
        if generation != self._generation or self._stop.is_set():
            return  # not acked: Mosquitto delivers them again
        batches = self._batches
        batches.refresh()
        now = time.time()
        order, route, add = self._order, self._route, batches.add
        order.extend(msgs)
        for pending in msgs:
            pending.session = generation
            pending.route = topic, value, key = route(pending, now)
            add(topic, key, value, pending)
        self.stats.received += len(msgs)
        if len(order) >= PAUSE_AT and not self._paused:
            self._paused = True
            self._session.pause()

    # --- the loop -------------------------------------------------------------
    async def run(self, ready: asyncio.Event | None = None) -> None:
        self._batches = RecordBatches(await self._new_producer(), self._delivered, self._new_producer)
        connection = asyncio.create_task(self._keep_connected(ready))
        stopped = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({connection, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if connection.done():
                connection.result()  # it only ends at a stop: anything else is a bug, raised here
        finally:
            connection.cancel()
            stopped.cancel()
            await self._shutdown()

    def stop(self) -> None:
        self._stop.set()

    async def _new_producer(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(**kafka_client(self.settings), acks="all", enable_idempotence=True,
                                    max_batch_size=512 * 1024, request_timeout_ms=15000)
        await start_when_reachable(producer, "bridge producer")
        return producer

    def _forward(self, pending: _Pending, now: float | None = None, alone: bool = False) -> None:
        if pending.route is None:
            pending.route = self._route(pending, time.time() if now is None else now)
        topic, value, key = pending.route
        self._batches.add(topic, key, value, pending, alone=alone)

    def _refuse(self, pending: _Pending, exc: BaseException) -> bool:
        """Kafka refused the record for what it is: route a dead letter instead (only the size and SHA-256 of the
        payload if the refused record was already a dead letter). False: retry it as it is."""
        if _retriable(exc) or pending.refusals >= 2:  # a 2 KB letter refused too: Kafka's fault, not the message's
            return False
        pending.refusals += 1
        payload = pending.payload
        keep = 0 if pending.route[0] == self.settings.topic_dead_letters else self.limits.dead_letter_keep_bytes
        letter = processing_error("mqtt_message", "Kafka", exc, payload).dead_letter(
            payload, "mqtt", keep_bytes=keep, mqtt_topic=_topic_text(pending))
        log.error("Kafka refused the record of %s (%s); sending a dead letter instead", _topic_text(pending)[:200], exc)
        pending.route = (self.settings.topic_dead_letters, letter.encode(), letter.key())
        return True

    def _delivered(self, items: list[_Pending], error: BaseException | None) -> None:
        """One Kafka batch settled: PUBACKs for what is confirmed, in arrival order; a refused record becomes a dead
        letter, a batch that failed on Kafka's side is sent again (Mosquitto keeps the messages meanwhile)."""
        if error is None:
            self._failing_since = None
            dlq, letters = self.settings.topic_dead_letters, 0
            for p in items:
                p.done = True
                letters += p.route[0] == dlq
            self.stats.dead_lettered += letters
            self.stats.forwarded += len(items) - letters
            self._release_acks()
            return
        live = [p for p in items if p.session == self._generation]  # the others come again on the new connection
        if self._stop.is_set() or not live:
            return  # not acked: Mosquitto keeps them
        if isinstance(error, asyncio.CancelledError) or _retriable(error):
            self._retry(live, error)
            return
        self._batches.renew()  # the producer's sequence counted what Kafka refused: see RecordBatches.renew
        if isinstance(error, OutOfOrderSequenceNumber | UnknownProducerId):  # that gap, not these records' fault
            self._retry(live, error)
        elif len(live) > 1:  # Kafka refused one of them for what it is: each alone, to learn which
            for p in live:
                self._forward(p, alone=True)
        elif self._refuse(live[0], error):
            self._forward(live[0], alone=True)
        else:
            self._retry(live, error)

    def _retry(self, items: list[_Pending], error: object) -> None:
        """Send a failed batch's records again after a backoff, in their order. The backoff is half the time
        Kafka has been failing (0.2 to 10 s): short for the batches of one refusal, long in an outage."""
        self.stats.kafka_retries += 1
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        delay = min(max(0.2, (now - self._failing_since) / 2), 10)

        async def again() -> None:
            log.warning("Kafka send of %d records failed (%s); retrying in %.1fs", len(items), error, delay)
            await asyncio.sleep(delay)
            for p in items:
                if p.session == self._generation and not self._stop.is_set():
                    self._forward(p, alone=p.refusals > 0)

        task = asyncio.get_running_loop().create_task(again())
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    def _topic_route(self, raw: bytes) -> _Route:
        """The route of a message's raw topic; raises TopicError for a topic outside the scheme (not remembered)."""
        route = self._routes.get(raw)
        if route is None:
            where = parse_topic(raw.decode("utf-8", "replace"))
            telemetry = where.kind == "telemetry"
            route = _Route(where, SensorReading if telemetry else DeviceStatus, "sensor_reading" if telemetry else "device_status",
                           self.settings.topic_sensor_readings if telemetry else self.settings.topic_device_status,
                           where.device_id.encode())
            if len(self._routes) >= MAX_ROUTES:
                self._routes.clear()
            self._routes[raw] = route
        return route

    def _route(self, msg: Publish, now: float) -> tuple[str, bytes, bytes]:
        """Where a message goes: (topic, value, key). Invalid messages become dead letters, and so does a message
        that breaks anything here: no content can stop the bridge or hold the PUBACKs behind it."""
        payload = msg.payload
        try:
            route = self._topic_route(msg.topic)
            event = parse(payload, route.model, now=now, limits=self.limits)
            where = route.where
            if event.device_id != where.device_id or event.site != where.site or event.zone != where.zone:
                mismatch = [  # a device may not speak for another
                    FieldError(name, repr(getattr(event, name)), f"does not match the MQTT topic ({expected!r})")
                    for name, expected in (("site", where.site), ("zone", where.zone), ("device_id", where.device_id))
                    if getattr(event, name) != expected
                ]
                raise InvalidEvent(route.kind, mismatch)
            return route.out_topic, payload, route.key  # the key: the device id, equal to the event's (checked above)
        except InvalidEvent as exc:
            error = exc
        except TopicError as exc:
            error = InvalidEvent("mqtt_message", [FieldError("topic", _topic_text(msg), str(exc))])
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.exception("a message on %s broke the bridge's routing; dead-lettered", _topic_text(msg)[:200])
            error = processing_error("mqtt_message", "the bridge", exc, payload)
        letter = error.dead_letter(payload, "mqtt", keep_bytes=self.limits.dead_letter_keep_bytes, mqtt_topic=_topic_text(msg))
        return self.settings.topic_dead_letters, letter.encode(), letter.key()

    def _release_acks(self) -> None:
        """PUBACKs in arrival order, as MQTT requires: every confirmed message at the head, in one write."""
        order = self._order
        if not order or not order[0].done:
            return
        mids, n = [], 0
        while order and order[0].done:
            mid = order.popleft().mid
            if mid:  # QoS 0: nothing to acknowledge
                mids.append(mid)
            n += 1
        self.stats.acked += n
        self._session.ack(mids)
        if self._paused and len(order) < PAUSE_AT // 2:
            self._paused = False
            self._session.resume()

    async def _shutdown(self) -> None:
        """Finish what is in flight (up to `STOP_INFLIGHT_SECONDS`: PUBACKs for what Kafka confirms meanwhile), then
        leave. Messages received after the stop, or not confirmed, are not acked: Mosquitto keeps them in the
        persistent session and delivers them to the next bridge of the session or group."""
        if self._session is not None:
            self._session.pause()
        deadline = time.monotonic() + STOP_INFLIGHT_SECONDS
        while self._order and time.monotonic() < deadline and self._connected.is_set():
            await asyncio.sleep(0.05)
        if self._order:
            log.warning("stop: %d messages not confirmed by Kafka in %.0f s; not acked, Mosquitto delivers them again",
                        len(self._order), STOP_INFLIGHT_SECONDS)
        for task in list(self._retries):
            task.cancel()
        if self._batches is not None:
            self._batches.cancel()
        if self._session is not None:
            self._session.disconnect()
            await asyncio.sleep(0.1)  # let the loop write the PUBACKs and the DISCONNECT
        if self._batches is not None:
            try:  # nothing is acked after this: what it still holds is in Mosquitto's session too
                await asyncio.wait_for(self._batches.producer.stop(), STOP_PRODUCER_SECONDS)
            except TimeoutError:
                log.warning("stop: the Kafka producer did not close in %.0f s", STOP_PRODUCER_SECONDS)


async def run_bridge(settings: Settings, client_id: str, share_group: str | None, report_every: float = 10.0) -> BridgeStats:
    import signal

    from streams.runtime import heap

    heap.configure()  # fewer young collections: a message's objects live until Kafka confirmed it
    bridge = Bridge(settings, client_id=client_id, share_group=share_group)
    loop = asyncio.get_running_loop()
    connected = asyncio.Event()

    async def freeze_when_connected() -> None:
        """What is alive once connected (modules, clients) stays: full collections skip it from then on (without, a
        bridge in `wharf bench bridge` spent 0.46 s in 7 full collections over it, ~65 ms each)."""
        await connected.wait()
        heap.freeze()

    freezer = asyncio.create_task(freeze_when_connected())

    async def report() -> None:
        while True:
            await asyncio.sleep(report_every)
            log.info("%s", bridge.stats.line())

    reporter = asyncio.create_task(report())
    from mqtt_bridge.alerts import AlertPublisher  # alarm events back over MQTT, beside the bridge

    metrics_server = metrics.serve(bridge.stats, settings)  # WHARF_BRIDGE_METRICS_PORT: /metrics for Prometheus

    alerts = AlertPublisher(settings, client_id=f"{client_id}-alerts")
    alerts_task = asyncio.create_task(alerts.run())

    def stop() -> None:  # both at once: the alerts publisher's stop runs beside the bridge's in-flight wait
        bridge.stop()
        alerts.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    try:
        await bridge.run(connected)
    finally:
        reporter.cancel()
        freezer.cancel()
        if metrics_server is not None:
            metrics_server.shutdown()
        alerts.stop()
        await asyncio.wait({alerts_task}, timeout=STOP_ALERTS_SECONDS)
        alerts_task.cancel()  # its uncommitted alerts are read again by the next publisher
    return bridge.stats
