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
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from mqtt_bridge.topics import TopicError, parse_topic
from schemas.events import DeviceStatus, SensorReading
from schemas.validation import FieldError, InvalidEvent, Limits, parse
from wharf.settings import Settings

log = logging.getLogger("wharf.bridge")

SUBSCRIPTIONS = ("wharf/+/+/+/telemetry", "wharf/+/+/+/status")


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
    mid: int
    done: bool = False


class Bridge:
    def __init__(self, settings: Settings, client_id: str = "wharf-bridge-1", share_group: str | None = "wharf-bridge"):
        self.settings = settings
        self.client_id = client_id
        self.share_group = share_group
        self.limits = Limits.from_settings(settings)
        self.stats = BridgeStats()
        self._queue: asyncio.Queue[mqtt.MQTTMessage] | None = None
        self._order: deque[_Pending] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._producer: AIOKafkaProducer | None = None
        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()

    # --- MQTT side (paho's network thread) ----------------------------------
    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=False,
                             protocol=mqtt.MQTTv311, manual_ack=True)
        client.username_pw_set(self.settings.mqtt_bridge_user, self.settings.mqtt_bridge_password)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
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
        if not self._stop.is_set():
            log.warning("MQTT disconnected (%s); paho reconnects with backoff", reason_code)

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage):  # noqa: ANN001
        # Hand over to asyncio; the ack order is fixed here, in arrival order.
        assert self._loop is not None and self._queue is not None
        self._loop.call_soon_threadsafe(self._queue.put_nowait, msg)

    # --- asyncio side --------------------------------------------------------
    async def run(self, ready: asyncio.Event | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap, acks="all", enable_idempotence=True,
            linger_ms=2, max_batch_size=256 * 1024, request_timeout_ms=15000,
        )
        await self._start_producer()
        self._client = self._make_client()
        self._client.connect_async(self.settings.mqtt_host, self.settings.mqtt_port, keepalive=30)
        self._client.loop_start()
        try:
            while not self._connected.is_set():
                await asyncio.sleep(0.05)
            if ready is not None:
                ready.set()
            while not self._stop.is_set():
                try:
                    msg = await asyncio.wait_for(self._queue.get(), timeout=0.5)
                except TimeoutError:
                    continue
                self.stats.received += 1
                pending = _Pending(msg.mid)
                self._order.append(pending)
                task = asyncio.create_task(self._deliver(msg, pending))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            await self._shutdown()

    def stop(self) -> None:
        self._stop.set()

    async def _start_producer(self) -> None:
        delay = 0.5
        while True:
            try:
                await self._producer.start()
                return
            except KafkaError as exc:
                log.warning("Kafka not reachable (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)

    async def _deliver(self, msg: mqtt.MQTTMessage, pending: _Pending) -> None:
        topic, value, key = self._route(msg)
        delay = 0.2
        while True:
            try:
                await (await self._producer.send(topic, value, key=key))
                break
            except KafkaError as exc:  # not acked: Mosquitto keeps the message while we retry
                self.stats.kafka_retries += 1
                log.warning("Kafka send failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)
        if topic == self.settings.topic_dead_letters:
            self.stats.dead_lettered += 1
        else:
            self.stats.forwarded += 1
        pending.done = True
        self._release_acks()

    def _route(self, msg: mqtt.MQTTMessage) -> tuple[str, bytes, bytes]:
        """Where a message goes: (topic, value, key). Invalid messages become dead letters."""
        payload = bytes(msg.payload)
        now = time.time()
        try:
            where = parse_topic(msg.topic)
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
        except (InvalidEvent, TopicError) as exc:
            error = exc if isinstance(exc, InvalidEvent) else InvalidEvent("mqtt_message", [FieldError("topic", repr(msg.topic), str(exc))])
            letter = error.dead_letter(payload, "mqtt", mqtt_topic=msg.topic)
            return self.settings.topic_dead_letters, letter.encode(), msg.topic.encode()

    def _release_acks(self) -> None:
        while self._order and self._order[0].done:
            p = self._order.popleft()
            self._client.ack(p.mid, 1)
            self.stats.acked += 1

    async def _shutdown(self) -> None:
        """Finish what is in flight (bounded), then leave: unacked messages stay with Mosquitto."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        if self._producer is not None:
            await self._producer.stop()


async def run_bridge(settings: Settings, client_id: str, share_group: str | None, report_every: float = 10.0) -> BridgeStats:
    import signal

    bridge = Bridge(settings, client_id=client_id, share_group=share_group)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, bridge.stop)

    async def report() -> None:
        while True:
            await asyncio.sleep(report_every)
            log.info("%s", bridge.stats.line())

    reporter = asyncio.create_task(report())
    from mqtt_bridge.alerts import AlertPublisher  # alarm events back over MQTT, beside the bridge

    alerts = AlertPublisher(settings, client_id=f"{client_id}-alerts")
    alerts_task = asyncio.create_task(alerts.run())
    try:
        await bridge.run()
    finally:
        reporter.cancel()
        alerts.stop()
        await asyncio.wait({alerts_task}, timeout=10)
    return bridge.stats


def stats_dict(stats: BridgeStats) -> dict[str, Any]:
    return {**stats.__dict__, "in_flight": stats.in_flight}
