"""The worker consumer's fetch wait: how long the broker may hold a fetch of partitions that have no new records.

faust-streaming creates the worker's `AIOKafkaConsumer` with `fetch_max_wait_ms=1500`, not a setting. aiokafka's
fetcher sends at most one fetch per broker at a time, and leaves out a partition whose fetched records the worker
has not drained yet. So while the worker is busy for more than aiokafka's prefetch backoff (0.1 s), the next fetch
names only the partitions without records (the other topics, the idle partitions), and the broker holds it the
full wait: the busy partitions' new records sit in Kafka until it returns. At 5,000 readings/s this was the tail
of `wharf bench sensors`: the worker fetched no reading for 1.5 s about every 4-7 s, then caught up with batches of
5,000 and more (docs/performance.md, "Latency tail at 5,000 readings/s"). A short wait bounds that gap; what it
costs is an empty fetch per wait while nothing arrives.
"""

from __future__ import annotations

from typing import Any


def install(fetch_max_wait_ms: int) -> None:
    """Make the worker consumers created from now on wait at most `fetch_max_wait_ms` for records."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    create = getattr(AIOKafkaConsumerThread._create_worker_consumer, "__wrapped__", AIOKafkaConsumerThread._create_worker_consumer)  # noqa: SLF001

    def _create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        consumer._fetch_max_wait_ms = fetch_max_wait_ms  # noqa: SLF001 - read when it starts (its Fetcher)
        return consumer

    _create_worker_consumer.__wrapped__ = create  # type: ignore[attr-defined]
    AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # noqa: SLF001
