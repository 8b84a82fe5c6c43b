"""`streams.runtime.recent.RecentKeys`, the one bounded window of recently seen keys, and the device state that keeps one."""

from __future__ import annotations

import pytest

from streams.runtime.recent import RecentKeys


def test_a_copy_is_noticed_and_the_oldest_key_is_forgotten_beyond_capacity() -> None:
    recent = RecentKeys(3, [("a", 1)])
    assert recent.seen(("a", 1)) and recent.copies == 1
    assert not recent.seen(("b", 2)) and not recent.seen(("c", 3)) and not recent.seen(("d", 4))
    assert list(recent) == [("b", 2), ("c", 3), ("d", 4)] and ("a", 1) not in recent
    assert not recent.seen(("a", 1))  # forgotten: new again
    assert len(recent) == 3


def test_touch_keeps_least_recently_used_order_and_newest_gives_the_tail() -> None:
    recent = RecentKeys(3, "xyz")
    recent.touch("x")
    recent.touch("w")  # y, the least recently used, goes
    assert list(recent) == ["z", "x", "w"] and recent.newest(2) == ["x", "w"] and recent.newest(0) == []


def test_more_initial_keys_than_capacity_keep_the_newest() -> None:
    assert list(RecentKeys(2, range(10))) == [8, 9]
    with pytest.raises(ValueError, match="capacity"):
        RecentKeys(0)


def test_a_device_state_with_its_window_as_tuples_loads_into_recent_keys() -> None:
    """The state format keeps the window as two arrays, or as a dict of (seq, ts) where they do not fit: both load."""
    from agents.devices import DEVICE_DEDUP_KEYS, DeviceState, _device_state

    fits = [(1, 10.0), (2, 11.0), ((1 << 63) - 1, 12.5)]
    others = [[(1 << 64, 10.0), (2, 11.0)], [(1 << 63, 10.0)], [(-1, 10.0)], [(1, 10)], [(True, 10.0)], [(1.0, 10.0)]]
    for keys in [fits, [], *others]:  # the others do not fit (int64, float64) as they are
        st = DeviceState.new("dev-9", 0)
        for key in keys:
            assert not st.recent.seen(key)
        window = _device_state(st)["recent"]
        assert type(window) is (dict if keys in others else tuple), keys
        back = DeviceState.load(st.dump())
        assert type(back.recent) is RecentKeys and back.recent.capacity == DEVICE_DEDUP_KEYS
        assert list(back.recent) == keys and [type(x) for k in back.recent for x in k] == [type(x) for k in keys for x in k]
        assert all(back.recent.seen(key) for key in keys)


@pytest.mark.parametrize("window", [{5: None}, {(1,): None}, {(1, 2.0, 3): None}, {(1, 2.0): None, "ab": None}, {(): None}])
def test_a_device_state_whose_window_keys_are_not_pairs_is_refused_at_load(window: dict) -> None:
    """State comes from a Kafka changelog: a window key that is not a (seq, ts) pair is refused when the state is
    read (the worker restores the device afresh), not left to break the next checkpoint's encoding."""
    from agents.devices import STATE_VERSION, DeviceState, _set_device_state
    from online_models.alarms import STATE_TYPES as ALARM_STATE_TYPES
    from online_models.anomaly.state_types import STATE_TYPES as ANOMALY_STATE_TYPES
    from schemas.state import StateCodec, StateFormatError, StateType, StateTypes

    crafted = StateCodec(StateTypes(StateType(DeviceState, lambda st: {**st.__dict__, "recent": window}, _set_device_state))
                         | ANOMALY_STATE_TYPES | ALARM_STATE_TYPES)
    blob = crafted.dumps((STATE_VERSION, DeviceState.new("dev-9", 0)), compress=True)
    with pytest.raises(StateFormatError, match="not \\(seq, ts\\) pairs"):
        DeviceState.load(blob)


def test_a_copy_has_the_same_keys_in_order_and_goes_its_own_way() -> None:
    window: RecentKeys[int] = RecentKeys(3, [1, 2, 3])
    window.seen(3)
    twin = window.copy()
    assert twin == window and twin.copies == 1 and list(twin) == [1, 2, 3]
    window.seen(4)  # forgets 1 in the original only
    assert list(window) == [2, 3, 4] and list(twin) == [1, 2, 3]
    assert not twin.seen(5) and list(twin) == [2, 3, 5]


@pytest.mark.parametrize("seed", range(40))
def test_the_window_keeps_exactly_what_a_least_recently_used_ordered_dict_keeps(seed: int) -> None:
    """`seen`, `touch`, copies and `newest` against `OrderedDict` (the reference: at most `capacity` keys, the
    oldest forgotten), through many turns of the window's two dicts."""
    import random
    from collections import OrderedDict

    rng = random.Random(seed)
    capacity = rng.randint(1, 40)
    start = [rng.randint(0, 60) for _ in range(rng.randint(0, 50))]
    window, ref = RecentKeys(capacity, start), OrderedDict.fromkeys(start)
    while len(ref) > capacity:
        ref.popitem(last=False)
    copies = 0
    for step in range(400):
        key, op = rng.randint(0, 80), rng.random()
        if op < 0.6:
            assert window.seen(key) == (key in ref)
            copies += key in ref
            ref.setdefault(key, None)
        elif op < 0.9:
            window.touch(key)
            ref.pop(key, None)
            ref[key] = None
        elif op < 0.95:
            twin = window.copy()
            assert twin == window and not twin.seen(1000 + step)  # the copy goes its own way
        else:
            n = rng.randint(0, capacity + 2)
            assert window.newest(n) == (list(ref)[-n:] if n > 0 else [])
        while len(ref) > capacity:
            ref.popitem(last=False)
        assert list(window) == list(ref) and len(window) == len(ref)
        assert all((k in window) == (k in ref) for k in range(82))
    assert window.copies == copies
