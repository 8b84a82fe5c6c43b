"""Alarm events back to the devices' world: Kafka `wharf.alerts` -> MQTT `wharf/{site}/alerts` (QoS 1).

At least once: a batch of alarm events is published, and the Kafka offsets are
committed only after Mosquitto acknowledged every message of the batch (PUBACK).
A crash in between republishes the batch; subscribers can drop copies by
`(alarm_id, details.rev)` (docs/alerts.md). Events of one alarm share a Kafka
partition (keyed by alarm_id), so they are published in order.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from mqtt_bridge.connection import bridge_endpoint, secure
from mqtt_bridge.kafka import start_when_reachable
from mqtt_bridge.topics import LEVEL, alerts_topic
from schemas import codec
from schemas.validation import processing_error
from streams.runtime.kafka_auth import kafka_client
from schemas.settings import Settings

log = logging.getLogger("wharf.bridge.alerts")


@dataclass
class AlertPublisherStats:
    consumed: int = 0
    published: int = 0
    commits: int = 0
    dead_lettered: int = 0
    started: float = field(default_factory=time.time)


class AlertPublisher:
    def __init__(self, settings: Settings, client_id: str = "wharf-bridge-1-alerts", group_id: str | None = None) -> None:
        self.settings = settings
        self.client_id = client_id
        self.group_id = group_id or f"{settings.app_id}-alerts-mqtt"
        self.stats = AlertPublisherStats()
        self._stop = asyncio.Event()
        self._connected = threading.Event()
        self._producer: AIOKafkaProducer | None = None

    def stop(self) -> None:
        self._stop.set()

    def _client(self) -> mqtt.Client:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True, protocol=mqtt.MQTTv311)
        c.username_pw_set(self.settings.mqtt_bridge_user, self.settings.bridge_password())
        secure(c, self.settings)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.max_inflight_messages_set(1000)
        c.max_queued_messages_set(0)  # unbounded: the consumer only reads the next batch after this one was acked
        c.on_connect = lambda client, u, f, rc, p: self._connected.set() if not rc.is_failure else log.error("alerts MQTT refused: %s", rc)
        c.on_disconnect = lambda *a: self._connected.clear()
        return c

    async def run(self, ready: asyncio.Event | None = None) -> None:
        client = self._client()
        client.connect_async(*bridge_endpoint(self.settings), keepalive=30)
        client.loop_start()
        consumer = AIOKafkaConsumer(self.settings.topic_alerts, **kafka_client(self.settings),
                                    group_id=self.group_id, enable_auto_commit=False, auto_offset_reset="earliest")
        try:
            await self._start(consumer)
            while not self._connected.is_set() and not self._stop.is_set():
                await asyncio.sleep(0.05)
            if ready is not None:
                ready.set()
            while not self._stop.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=1000)
                msgs = [m for part in batch.values() for m in part]
                if not msgs:
                    continue
                self.stats.consumed += len(msgs)
                infos, letters = [], []
                for m in msgs:
                    try:
                        infos.append(client.publish(alerts_topic(self._site(m.value)), m.value, qos=1))
                    except Exception as exc:  # noqa: BLE001 - one record must not stop the publisher
                        letters.append(self._dead_letter(m, exc))
                if not await asyncio.to_thread(self._wait_all, infos):
                    break  # stopping: the batch stays uncommitted and is published again by the next publisher
                await self._send_dead_letters(letters)
                self.stats.published += len(infos)
                await self._commit(consumer)
        finally:
            await consumer.stop()
            if self._producer is not None:
                await self._producer.stop()
            client.disconnect()
            client.loop_stop()

    @staticmethod
    def _site(value: bytes) -> str:
        """The alarm's site, as a topic level: an alert without a valid one (Wharf writes valid ones, but anyone
        with access to Kafka may write anything) goes to `wharf/unknown/alerts`."""
        try:
            site = codec.loads(value).get("site")
        except (ValueError, AttributeError):
            return "unknown"
        return site if isinstance(site, str) and LEVEL.match(site) else "unknown"

    def _dead_letter(self, m, exc: BaseException) -> tuple[bytes, bytes]:  # noqa: ANN001 - aiokafka ConsumerRecord
        """(key, value) of the record's dead letter."""
        log.error("alert at %s/%d/%d could not be published (%s); dead-lettered", m.topic, m.partition, m.offset, exc)
        error = processing_error("alert", "the MQTT alert publisher", exc, m.value)
        letter = error.dead_letter(m.value, "kafka", keep_bytes=self.settings.dead_letter_keep_bytes, kafka_topic=m.topic,
                                   kafka_partition=m.partition, kafka_offset=m.offset)
        return letter.key(), letter.encode()

    async def _send_dead_letters(self, letters: list[tuple[bytes, bytes]]) -> None:
        """Kafka has them before the batch's offsets are committed."""
        if not letters:
            return
        if self._producer is None:
            self._producer = AIOKafkaProducer(**kafka_client(self.settings), acks="all", enable_idempotence=True)
            await start_when_reachable(self._producer, "alerts dead-letter producer")
        futs = [await self._producer.send(self.settings.topic_dead_letters, value, key=key) for key, value in letters]
        await asyncio.gather(*futs)
        self.stats.dead_lettered += len(letters)

    def _wait_all(self, infos: list[mqtt.MQTTMessageInfo]) -> bool:
        """Whether every message was published (False: the publisher stops first). Paho resends after a reconnect;
        we wait as long as it takes (offsets stay uncommitted), or until `stop`."""
        for info in infos:
            while not info.is_published():
                if self._stop.is_set():
                    return False
                info.wait_for_publish(0.5)
        return True

    async def _start(self, consumer: AIOKafkaConsumer) -> None:
        await start_when_reachable(consumer, "alerts consumer")

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        delay = 0.2
        while True:
            try:
                await consumer.commit()
                self.stats.commits += 1
                return
            except KafkaError as exc:
                log.warning("alerts consumer: commit failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)
