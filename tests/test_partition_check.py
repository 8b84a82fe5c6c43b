"""streams.runtime.partition_check: a changelog not yet in the consumer's metadata is no partition mismatch."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from faust.exceptions import PartitionsMismatch
from faust.tables.base import Collection

from streams.runtime import partition_check


def _table(partitions: dict[str, int | None]) -> SimpleNamespace:
    consumer = SimpleNamespace(topic_partitions=partitions.get)
    return SimpleNamespace(app=SimpleNamespace(consumer=consumer), name="t", changelog_topic_name="t-changelog",
                           _verified_source_topics_for_partitions=set())


def test_unknown_changelog_is_checked_again_later_and_a_real_mismatch_still_raises():
    partition_check.install()
    partition_check.install()  # idempotent
    verify = Collection._verify_source_topic_partitions
    table = _table({"src": 8, "t-changelog": 0})  # Faust 0.15.3 raised PartitionsMismatch here
    verify(table, "src")
    assert table._verified_source_topics_for_partitions == set()  # not verified yet: checked on the next write
    table = _table({"src": 8, "t-changelog": 8})
    verify(table, "src")
    assert table._verified_source_topics_for_partitions == {"src"}
    with pytest.raises(PartitionsMismatch):
        verify(_table({"src": 8, "t-changelog": 4}), "src")
