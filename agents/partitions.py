"""Partitions of the commerce path: the shard of a key, table writes under an event of a partition, a log table's
entries by partition."""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiokafka.partitioner import murmur2
from faust.streams import _current_event

from streams.runtime.app import settings

log = logging.getLogger(__name__)

P = settings.topic_partitions


@functools.lru_cache(maxsize=1 << 17)
def partition_of(key: str, partitions: int = P) -> int:
    """The partition Kafka's default partitioner (murmur2) gives a key: the shard of a user (murmur2 is
    pure Python, ~10 us, and a request needs it twice: remembered for the users asked most recently)."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


@contextmanager
def as_event(event: Any) -> Iterator[None]:
    """Make `event` Faust's current event, so table writes go to its partition's store and changelog.

    Batches (`noack_take`) mix partitions; the state of partition p is written under an event of p."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def _partition_of_key(key: bytes) -> int:
    """Partition of a table key: `r/{p}/...` and `s/{p}/...` (streams.state.deltalog logs) or the v1 per-entry keys `u|i|g/{p}/...`."""
    return int(key.split(b"/", 2)[1])


def entries_of(table: Any, partitions: set[int]) -> dict[int, list[tuple[bytes, bytes]]]:
    """A log table's entries by partition, for these partitions only: one pass over the table's keys."""
    entries: dict[int, list[tuple[bytes, bytes]]] = {p: [] for p in partitions}
    for key, blob in table.items():
        try:
            p = _partition_of_key(key)
        except (IndexError, ValueError):
            log.error("%s: key %r is not one of a checkpoint log; ignored", table.name, key)
            continue
        if p in partitions:
            entries[p].append((key, blob))
    return entries
