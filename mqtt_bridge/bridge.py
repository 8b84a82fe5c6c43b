"""The lossless MQTT → Kafka bridge.

A message is acknowledged to Mosquitto (PUBACK, sent by hand: `manual_ack=True`)
only after Kafka confirmed it (acks=all, idempotent producer) — or, if it is
invalid, after its dead letter was confirmed. While Kafka is down or slow the
bridge stops acknowledging; Mosquitto holds at most `max_inflight_messages`
unacknowledged messages per bridge and queues the rest in the persistent session
(MQTT 3.1.1, clean_session=False: Mosquitto 2.0 restores those across its own
restarts, MQTT 5 sessions it does not). PUBACKs go out in the order the messages
arrived, as MQTT requires. Several bridges share the load through a shared
subscription (`$share/<group>/...`).

A crash between Kafka's confirmation and the PUBACK makes Mosquitto redeliver:
downstream, readings are identified by (device_id, seq, ts), so such copies are
dropped before storage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError, RequestTimedOutError

from mqtt_bridge.connection import bridge_endpoint, secure
from mqtt_bridge.kafka import start_when_reachable
from mqtt_bridge.topics import TopicError, parse_topic
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


@dataclass
class BridgeStats:
    received: int = 0
    forwarded: int = 0
    dead_lettered: int = 0
    acked: int = 0
    kafka_retries: int = 0
    mqtt_connects: int = 0
    started: float = field(default_factory=time.time)

    @property
    def in_flight(self) -> int:
        return self.received - self.acked

    def line(self) -> str:
        return (f"received {self.received}  forwarded {self.forwarded}  dead-lettered {self.dead_lettered}  "
                f"in flight {self.in_flight}  kafka retries {self.kafka_retries}  mqtt connects {self.mqtt_connects}")


@dataclass
class _Pending:
    msg: mqtt.MQTTMessage
    topic: str = ""
    done: bool = False
    route: tuple[str, bytes, bytes] | None = None  # (Kafka topic, value, key), decided once
    refusals: int = 0  # times Kafka refused its record for good (too large, ...)


def _retriable(exc: BaseException) -> bool:
    """Worth sending again unchanged: Kafka is away or busy. A record Kafka refuses for what it is (too large, ...)
    or a client error about the value is not: it becomes a smaller dead letter instead of blocking the PUBACKs."""
    return isinstance(exc, KafkaError) and bool(getattr(exc, "retriable", False)) or isinstance(exc, KafkaConnectionError | RequestTimedOutError)


def _topic_text(msg: mqtt.MQTTMessage) -> str:
    """The message's topic as text, whatever its bytes (paho's `topic` raises on invalid UTF-8)."""
    raw = getattr(msg, "_topic", b"")
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


class _AsyncioPaho:
    """Drives paho's socket from the asyncio loop (paho's documented external-loop hooks).

    One thread instead of two: messages arrive in the loop without a thread hop, and
    PUBACKs go out without waking another thread per ack, which is what limited the
    threaded bridge to ~2,000 messages/s here.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, client: mqtt.Client):
        self.loop, self.client = loop, client
        self.misc: asyncio.Task | None = None
        client.on_socket_open = self._open
        client.on_socket_close = self._close
        client.on_socket_register_write = self._want_write
        client.on_socket_unregister_write = self._no_write

    def _open(self, client, userdata, sock):  # noqa: ANN001
        self.loop.add_reader(sock, client.loop_read)
        self.misc = self.loop.create_task(self._misc())

    def _close(self, client, userdata, sock):  # noqa: ANN001
        self.loop.remove_reader(sock)
        self.loop.remove_writer(sock)
        if self.misc is not None:
            self.misc.cancel()

    def _want_write(self, client, userdata, sock):  # noqa: ANN001
        self.loop.add_writer(sock, client.loop_write)

    def _no_write(self, client, userdata, sock):  # noqa: ANN001
        self.loop.remove_writer(sock)

    async def _misc(self) -> None:
        while self.client.loop_misc() == mqtt.MQTT_ERR_SUCCESS:  # keepalive pings, timeouts
            await asyncio.sleep(1)


class Bridge:
    def __init__(self, settings: Settings, client_id: str = "wharf-bridge-1", share_group: str | None = "wharf-bridge"):
        self.settings = settings
        self.client_id = client_id
        self.share_group = share_group
        self.limits = Limits.from_settings(settings)
        self.stats = BridgeStats()
        self._incoming: deque[mqtt.MQTTMessage] = deque()
        self._wake = asyncio.Event()
        self._order: deque[_Pending] = deque()
        self._producer: AIOKafkaProducer | None = None
        self._client: mqtt.Client | None = None
        self._connected = asyncio.Event()
        self._stop = asyncio.Event()
        self._retries: set[asyncio.Task] = set()
        self._reconnecting: asyncio.Task | None = None

    # --- MQTT side (callbacks run in the asyncio loop) -----------------------
    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=False,
                             protocol=mqtt.MQTTv311, manual_ack=True)
        client.username_pw_set(self.settings.mqtt_bridge_user, self.settings.bridge_password())
        secure(client, self.settings)
        client.max_inflight_messages_set(1000)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _on_connect(self, client, userdata, flags, reason_code, properties):  # noqa: ANN001
        if reason_code.is_failure:
            log.error("MQTT connection refused: %s", reason_code)
            return
        self.stats.mqtt_connects += 1
        prefix = f"$share/{self.share_group}/" if self.share_group else ""
        client.subscribe([(prefix + s, 1) for s in SUBSCRIPTIONS])
        self._connected.set()
        log.info("MQTT connected (session present: %s)", flags.session_present)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):  # noqa: ANN001
        self._connected.clear()
        # Unacked messages are redelivered by Mosquitto on the next connection: forget their acks.
        self._order.clear()
        if not self._stop.is_set() and (self._reconnecting is None or self._reconnecting.done()):
            log.warning("MQTT disconnected (%s); reconnecting with backoff", reason_code)
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage):  # noqa: ANN001
        self._incoming.append(msg)
        self._wake.set()

    async def _reconnect(self) -> None:
        delay = 1.0
        while not self._stop.is_set() and not self._connected.is_set():
            try:
                self._client.reconnect()
                return
            except OSError as exc:
                log.warning("MQTT reconnect failed (%s); next try in %.0fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)

    # --- the loop -------------------------------------------------------------
    async def run(self, ready: asyncio.Event | None = None) -> None:
        loop = asyncio.get_running_loop()
        self._producer = AIOKafkaProducer(
            **kafka_client(self.settings), acks="all", enable_idempotence=True,
            linger_ms=5, max_batch_size=512 * 1024, request_timeout_ms=15000,
        )
        await start_when_reachable(self._producer, "bridge producer")
        self._client = self._make_client()
        _AsyncioPaho(loop, self._client)
        delay = 1.0
        while True:
            try:
                self._client.connect(*bridge_endpoint(self.settings), keepalive=30)
                break
            except OSError as exc:
                log.warning("MQTT broker not reachable (%s); retrying in %.0fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)
        try:
            await self._connected.wait()
            if ready is not None:
                ready.set()
            while not self._stop.is_set():
                if not self._incoming:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), timeout=0.5)
                    except TimeoutError:
                        pass
                    continue
                # Drain everything that arrived: one send per message, no task per message.
                while self._incoming:
                    msg = self._incoming.popleft()
                    self.stats.received += 1
                    pending = _Pending(msg)
                    self._order.append(pending)
                    await self._send(pending)
        finally:
            await self._shutdown()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def _send(self, pending: _Pending) -> None:
        if pending.route is None:
            pending.route = self._route(pending.msg)
        topic, value, key = pending.route
        pending.topic = topic
        try:
            fut = await self._producer.send(topic, value, key=key)
        except Exception as exc:  # noqa: BLE001 - whatever the record is, it is stored, dead-lettered or retried
            if self._refuse(pending, exc):
                await self._send(pending)
            else:
                self._retry(pending, exc)
            return
        fut.add_done_callback(lambda f, p=pending: self._sent(p, f))

    def _refuse(self, pending: _Pending, exc: BaseException) -> bool:
        """Kafka refused the record for what it is: route a dead letter instead (only the size and SHA-256 of the
        payload if the refused record was already a dead letter). False: retry it as it is."""
        if _retriable(exc) or pending.refusals >= 2:  # a 2 KB letter refused too: Kafka's fault, not the message's
            return False
        pending.refusals += 1
        payload = bytes(pending.msg.payload)
        keep = 0 if pending.topic == self.settings.topic_dead_letters else self.limits.dead_letter_keep_bytes
        letter = processing_error("mqtt_message", "Kafka", exc, payload).dead_letter(
            payload, "mqtt", keep_bytes=keep, mqtt_topic=_topic_text(pending.msg))
        log.error("Kafka refused the record of %s (%s); sending a dead letter instead", _topic_text(pending.msg)[:200], exc)
        pending.route = (self.settings.topic_dead_letters, letter.encode(), letter.key())
        return True

    def _sent(self, pending: _Pending, fut: asyncio.Future) -> None:
        if fut.cancelled() or fut.exception() is not None:  # not acked: Mosquitto keeps the message while we retry
            error = fut.exception() if not fut.cancelled() else None
            if error is not None and self._refuse(pending, error):
                self._spawn(self._send(pending))
            else:
                self._retry(pending, error or "cancelled")
            return
        if pending.topic == self.settings.topic_dead_letters:
            self.stats.dead_lettered += 1
        else:
            self.stats.forwarded += 1
        pending.done = True
        self._release_acks()

    def _retry(self, pending: _Pending, error: object) -> None:
        self.stats.kafka_retries += 1

        async def again() -> None:
            delay = min(0.2 * 2 ** min(self.stats.kafka_retries, 6), 10)
            log.warning("Kafka send failed (%s); retrying in %.1fs", error, delay)
            await asyncio.sleep(delay)
            await self._send(pending)

        self._spawn(again())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    def _route(self, msg: mqtt.MQTTMessage) -> tuple[str, bytes, bytes]:
        """Where a message goes: (topic, value, key). Invalid messages become dead letters, and so does a message
        that breaks anything here: no content can stop the bridge or hold the PUBACKs behind it."""
        payload = bytes(msg.payload)
        topic = _topic_text(msg)
        now = time.time()
        try:
            where = parse_topic(topic)
            model = SensorReading if where.kind == "telemetry" else DeviceStatus
            event = parse(payload, model, now=now, limits=self.limits)
            mismatch = [
                FieldError(name, repr(getattr(event, name)), f"does not match the MQTT topic ({expected!r})")
                for name, expected in (("site", where.site), ("zone", where.zone), ("device_id", where.device_id))
                if getattr(event, name) != expected
            ]
            if mismatch:  # a device may not speak for another
                raise InvalidEvent("sensor_reading" if where.kind == "telemetry" else "device_status", mismatch)
            out_topic = self.settings.topic_sensor_readings if where.kind == "telemetry" else self.settings.topic_device_status
            return out_topic, payload, event.device_id.encode()
        except InvalidEvent as exc:
            error = exc
        except TopicError as exc:
            error = InvalidEvent("mqtt_message", [FieldError("topic", topic, str(exc))])
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.exception("a message on %s broke the bridge's routing; dead-lettered", topic[:200])
            error = processing_error("mqtt_message", "the bridge", exc, payload)
        letter = error.dead_letter(payload, "mqtt", keep_bytes=self.limits.dead_letter_keep_bytes, mqtt_topic=topic)
        return self.settings.topic_dead_letters, letter.encode(), letter.key()

    def _release_acks(self) -> None:
        """PUBACKs in arrival order, as MQTT requires."""
        while self._order and self._order[0].done:
            p = self._order.popleft()
            self._client.ack(p.msg.mid, 1)
            self.stats.acked += 1

    async def _shutdown(self) -> None:
        """Finish what is in flight (up to `STOP_INFLIGHT_SECONDS`: PUBACKs for what Kafka confirms meanwhile), then
        leave. Messages not forwarded (still in `_incoming`) or not confirmed are not acked: Mosquitto keeps them in
        the persistent session and delivers them to the next bridge of the session or group."""
        deadline = time.monotonic() + STOP_INFLIGHT_SECONDS
        while self._order and time.monotonic() < deadline and self._connected.is_set():
            await asyncio.sleep(0.05)
        if self._order:
            log.warning("stop: %d messages not confirmed by Kafka in %.0f s; not acked, Mosquitto delivers them again",
                        len(self._order), STOP_INFLIGHT_SECONDS)
        for task in list(self._retries):
            task.cancel()
        if self._client is not None:
            self._client.disconnect()
            await asyncio.sleep(0.1)  # let the loop write the PUBACKs and the DISCONNECT
        if self._producer is not None:
            try:  # nothing is acked after this: what it still holds is in Mosquitto's session too
                await asyncio.wait_for(self._producer.stop(), STOP_PRODUCER_SECONDS)
            except TimeoutError:
                log.warning("stop: the Kafka producer did not close in %.0f s", STOP_PRODUCER_SECONDS)


async def run_bridge(settings: Settings, client_id: str, share_group: str | None, report_every: float = 10.0) -> BridgeStats:
    import signal

    bridge = Bridge(settings, client_id=client_id, share_group=share_group)
    loop = asyncio.get_running_loop()

    async def report() -> None:
        while True:
            await asyncio.sleep(report_every)
            log.info("%s", bridge.stats.line())

    reporter = asyncio.create_task(report())
    from mqtt_bridge import metrics
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
        await bridge.run()
    finally:
        reporter.cancel()
        if metrics_server is not None:
            metrics_server.shutdown()
        alerts.stop()
        await asyncio.wait({alerts_task}, timeout=STOP_ALERTS_SECONDS)
        alerts_task.cancel()  # its uncommitted alerts are read again by the next publisher
    return bridge.stats


def stats_dict(stats: BridgeStats) -> dict[str, Any]:
    return {**stats.__dict__, "in_flight": stats.in_flight}
