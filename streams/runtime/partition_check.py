"""Faust's check that a table's changelog has as many partitions as its source, without its false alarm.

Before a table's first write from a source topic, faust-streaming (0.15.3) compares the partition
counts of the source topic and of the changelog in the consumer's metadata snapshot. The snapshot is
taken when the group's partitions are assigned and refreshed with the cluster metadata (every 5
minutes), so a changelog that Faust created just before the assignment can be in it with 0
partitions. The check then raised `PartitionsMismatch` ("... has 8 partitions, but the changelog
topic ... has 0 partitions"), the agent crashed, and the worker stalled waiting for the agent's
unacked records: seen once in the demo test, whose first review arrived about 5 minutes after start.

Here a count of 0 means "not known yet": the write goes ahead (to the event's partition, as always;
the producer has metadata of its own) and the check runs again on the next write, until both counts
are known. A real mismatch still raises.
"""

from __future__ import annotations

from typing import Any

from faust.tables.base import Collection


def install() -> None:
    """Patch `Collection._verify_source_topic_partitions` (idempotent)."""
    original = Collection._verify_source_topic_partitions  # noqa: SLF001 - see the module docstring
    if getattr(original, "wharf_patched", False):
        return

    def verify(self: Any, source_topic: str) -> None:
        if source_topic in self._verified_source_topics_for_partitions:  # noqa: SLF001
            return
        if self.app.consumer.topic_partitions(self.changelog_topic_name) == 0:
            return  # not in the consumer's metadata yet: check again on a later write
        original(self, source_topic)

    verify.wharf_patched = True  # type: ignore[attr-defined]
    Collection._verify_source_topic_partitions = verify  # noqa: SLF001
