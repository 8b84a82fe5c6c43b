"""The worker consumer's fetch: how long the broker may hold it, and how much it gathers before it answers early.

faust-streaming creates the worker's `AIOKafkaConsumer` with `fetch_max_wait_ms=1500` and aiokafka's
`fetch_min_bytes=1`, neither a setting. aiokafka's fetcher sends at most one fetch per broker at a time, and leaves
out a partition whose fetched records the worker has not drained yet. So while the worker is busy for more than
aiokafka's prefetch backoff (0.1 s), the next fetch names only the partitions without records (the other topics,
the idle partitions), and the broker holds it the full wait: the busy partitions' new records sit in Kafka until it
returns. At 5,000 readings/s this was the tail of `wharf bench sensors`: the worker fetched no reading for 1.5 s
about every 4-7 s (docs/performance.md, "Latency tail at 5,000 readings/s"). A short wait bounds that gap.

With one byte enough, the broker answers as soon as anything arrives: the worker then fetched 185-245 times a
second whatever the rate, each fetch naming every assigned partition (145 in `wharf bench sensors`), built and
decoded in Python on Faust's consumer thread, which took more CPU than the event loop and held the GIL against it.
Gathering `fetch_min_bytes` (or until the wait passes) makes it a few dozen fetches a second at live rates, and
costs a record at most the wait; in a catch-up the bytes are there at once (docs/performance.md, "The worker's
fetch").
"""

from __future__ import annotations

from typing import Any


def install(fetch_max_wait_ms: int, fetch_min_bytes: int) -> None:
    """Make the worker consumers created from now on wait at most `fetch_max_wait_ms` for `fetch_min_bytes`."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    create = getattr(AIOKafkaConsumerThread._create_worker_consumer, "__wrapped__", AIOKafkaConsumerThread._create_worker_consumer)  # noqa: SLF001

    def _create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        consumer._fetch_max_wait_ms = fetch_max_wait_ms  # noqa: SLF001 - read when it starts (its Fetcher)
        consumer._fetch_min_bytes = fetch_min_bytes  # noqa: SLF001
        return consumer

    _create_worker_consumer.__wrapped__ = create  # type: ignore[attr-defined]
    AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # noqa: SLF001
