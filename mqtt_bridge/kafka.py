"""Starting a Kafka client that must wait for Kafka: the bridge's producer and the alerts publisher's consumer."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka.errors import KafkaError

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
