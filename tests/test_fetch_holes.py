"""The fetch's hole check (`streams/runtime/batches.py` `_hole`): a record is passed on only after every record
before it, in the cases a per-fetch trace of a rebalance showed (docs/faust-findings.md)."""

from __future__ import annotations

from streams.runtime.batches import _first_undelivered, _hole, _not_passed

TP = ("test.sensor_readings", 2)


def test_a_jump_past_the_read_offset_is_a_hole_and_the_next_offset_is_not():
    assert _hole(193, 171, None) == 171  # a fetch of 171-192 was dropped, 193 came next
    assert _hole(172, 171, None) is None
    assert _hole(171, 171, None) is None  # Faust's seek sets the read offset to the next one to read
    assert _hole(5, None, None) is None  # nothing read yet and nothing dropped: whatever comes first


def test_a_record_after_one_dropped_with_no_read_offset_yet_is_a_hole():
    undelivered: dict = {}
    _not_passed(undelivered, 2, TP, 114)  # 114-123 fetched while the partition was paused, dropped
    first = _first_undelivered(undelivered, TP, None, 2)
    assert first == 114
    assert _hole(124, None, first) == 114  # 124 must not reach the writers before 114-123
    assert _hole(114, None, first) is None  # the re-fetch from 114 goes on


def test_a_dropped_record_is_forgotten_once_read_again_or_after_a_rebalance():
    undelivered: dict = {}
    _not_passed(undelivered, 2, TP, 114)
    _not_passed(undelivered, 2, TP, 120)  # a later drop keeps the lowest
    assert undelivered[TP] == (2, 114)
    assert _first_undelivered(undelivered, TP, 113, 2) == 114  # read up to 113: 114 is still owed
    assert _hole(124, 100, 114) == 100  # the read offset lies further back: read from there
    assert _first_undelivered(undelivered, TP, 114, 2) is None  # the read offset reached it (Faust's seek, or read)
    assert TP not in undelivered
    _not_passed(undelivered, 2, TP, 114)
    assert _first_undelivered(undelivered, TP, None, 3) is None  # a new assignment reads from the committed offset
    assert TP not in undelivered
