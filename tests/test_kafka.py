"""The real Kafka 3.9.1 broker (KRaft): produce/consume, and a consumer-group rebalance."""

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.abc import ConsumerRebalanceListener

from wharf.infra.kafka import ensure_topics
from streams.runtime.kafka_auth import kafka_client

pytestmark = pytest.mark.infra


async def test_produce_and_consume_in_order_per_key(stack, unique):
    topic = f"test.kafka.{unique}"
    assert await ensure_topics(stack, [topic], 4) == [topic]
    assert await ensure_topics(stack, [topic], 4) == []  # idempotent
    producer = AIOKafkaProducer(**kafka_client(stack), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for i in range(200):
            await producer.send(topic, f"{i}".encode(), key=f"dev-{i % 5}".encode())
        await producer.flush()
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, **kafka_client(stack), auto_offset_reset="earliest", group_id=f"g-{unique}")
    await consumer.start()
    seen: dict[bytes, list[int]] = {}
    try:
        async with asyncio.timeout(30):
            while sum(len(v) for v in seen.values()) < 200:
                for msgs in (await consumer.getmany(timeout_ms=1000)).values():
                    for m in msgs:
                        seen.setdefault(m.key, []).append(int(m.value))
    finally:
        await consumer.stop()
    assert sum(len(v) for v in seen.values()) == 200
    for key, values in seen.items():
        assert values == sorted(values), f"order lost for {key}"


class Recorder(ConsumerRebalanceListener):
    def __init__(self):
        self.assigned: set = set()

    async def on_partitions_revoked(self, revoked):
        self.assigned -= set(revoked)

    async def on_partitions_assigned(self, assigned):
        self.assigned = set(assigned)


async def _poll_until(consumers, predicate, timeout=45):
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.gather(*(c.getmany(timeout_ms=200) for c in consumers))


async def test_consumer_group_rebalance_between_two_consumers(stack, unique):
    topic = f"test.rebalance.{unique}"
    await ensure_topics(stack, [topic], 6)
    group = f"g-{unique}"

    def consumer(listener):
        c = AIOKafkaConsumer(**kafka_client(stack), group_id=group, auto_offset_reset="earliest",
                             session_timeout_ms=10000, heartbeat_interval_ms=500)
        c.subscribe([topic], listener=listener)
        return c

    ra, rb = Recorder(), Recorder()
    a, b = consumer(ra), consumer(rb)
    await a.start()
    try:
        await _poll_until([a], lambda: len(ra.assigned) == 6)
        await b.start()
        try:
            await _poll_until([a, b], lambda: len(ra.assigned) == 3 and len(rb.assigned) == 3)
            assert ra.assigned.isdisjoint(rb.assigned)
            assert {tp.partition for tp in ra.assigned | rb.assigned} == set(range(6))
        finally:
            await b.stop()  # leaving the group hands its partitions back
        await _poll_until([a], lambda: len(ra.assigned) == 6)
    finally:
        await a.stop()


async def test_a_refused_topic_creation_is_named_not_waited_on_silently(stack, unique):
    """CreateTopics reports a refusal in its result; ensure_topics retries until its deadline, then names it."""
    topic = f"test.refused.{unique}"
    with pytest.raises(TimeoutError, match=r"InvalidConfigurationError .*cleanup\.policy"):
        await ensure_topics(stack, [topic], 1, configs={topic: {"cleanup.policy": "nonsense"}}, timeout=1)
    assert await ensure_topics(stack, [topic], 1) == [topic]  # nothing was half-created
