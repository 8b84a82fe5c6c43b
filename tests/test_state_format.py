"""schemas/state.py: what checkpoints are written in. Every model's state comes back as it was; anything that is
not this format, or that it does not allow, is refused with StateFormatError and runs nothing."""

from __future__ import annotations

import csv
import os
import pickle
import random
import zlib
from collections import defaultdict, deque
from datetime import datetime
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from online_models.alarms import STATE_TYPES as ALARM_TYPES
from online_models.alarms import Alarm, AlarmBook, DeviceMonitor, MonitorConfig
from online_models.anomaly import RuleSet
from schemas.events import AlarmStatus, Severity
from schemas.state import MAGIC, Limits, StateCodec, StateFormatError, StateTypes

NAB = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "nab" / "data" / "realKnownCause"


class Marker:
    """Pickles that would write a file when loaded (what an attacker with access to the broker could produce)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _readings(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Real machine temperatures from NAB where the shared datasets are present, else a noisy daily cycle."""
    path = NAB / "machine_temperature_system_failure.csv"
    if path.exists():
        with path.open() as f:
            rows = list(csv.reader(f))[1:n + 1]
        ts = np.array([datetime.fromisoformat(r[0]).timestamp() for r in rows])
        return ts, np.array([float(r[1]) for r in rows])
    rng = np.random.default_rng(0)
    ts = 1.7e9 + 300.0 * np.arange(n)
    return ts, 70 + 5 * np.sin(ts / 86400 * 2 * np.pi) + rng.normal(0, 0.5, n)


def _device_state():
    from agents.devices import DeviceState

    ts, x = _readings(3000)
    st_ = DeviceState.new("dev-7", 3)
    rules = RuleSet(None)
    st_.monitor.device_type = "cold_room"
    for start in range(0, 2000, 32):
        t, v = ts[start:start + 32], x[start:start + 32]
        res = st_.model.score_learn_many(t, {"temperature": v, "humidity": v / 2})
        for j in range(len(t)):
            st_.recent.seen((start + j, float(t[j])))
            st_.monitor.reading(float(t[j]), {"temperature": float(v[j])}, rules, float(res.scores[j]), bool(res.is_anomaly[j]),
                                res.metrics[j])
    return st_, ts, x


def test_plain_values_come_back_with_their_types() -> None:
    shared = np.arange(6, dtype=np.float32)
    value = {
        "none": None, "flags": [True, False], "ints": [0, -1, 2**63 - 1, -2**63, 2**64, -(2**200)], "float": 1.5,
        "nan": float("nan"), "str": "Köln", "bytes": b"\x00\xff", "tuple": (1, ("a", 2.0), []), "list": [(1, 2), [3]],
        (4, "k"): "tuple key", 7: "int key", None: "none key", "set": {1, 2}, "frozen": frozenset({"a"}),
        "deque": deque([1, 2, 3], maxlen=5), "dd": defaultdict(list, {"a": [1]}), "enum": Severity.MAJOR,
        "arrays": [np.zeros((2, 3)), np.asfortranarray(np.arange(6.0).reshape(2, 3)), np.array(3.5), np.zeros(0, np.int64),
                   np.array([True, False]), np.array([1 + 2j], np.complex128), np.arange(4, dtype=">i4")],
        "scalars": [np.float64(0.1), np.float32(2.5), np.int64(-3), np.bool_(True)], "shared": [shared, shared],
    }
    codec = StateCodec(ALARM_TYPES)
    for compress in (False, True):
        back = codec.loads(codec.dumps(value, compress=compress))
        assert back.keys() == value.keys()
        for k, v in value.items():
            if k in ("arrays", "scalars", "shared", "nan"):
                continue
            assert back[k] == v and type(back[k]) is type(v), k
        assert back["tuple"] == (1, ("a", 2.0), []) and type(back["tuple"][1]) is tuple and type(back["tuple"][2]) is list
        assert back["deque"].maxlen == 5 and back["dd"].default_factory is list and back["nan"] != back["nan"]
        for a, b in zip(value["arrays"], back["arrays"], strict=True):
            assert b.dtype == a.dtype and b.shape == a.shape and np.array_equal(a, b) and b.flags.writeable
            assert b.flags.f_contiguous == a.flags.f_contiguous
        assert [type(s) for s in back["scalars"]] == [type(s) for s in value["scalars"]] and back["scalars"] == value["scalars"]
        assert back["shared"][0] is back["shared"][1]  # one array, as in the original


def test_a_device_state_scores_and_alarms_identically_after_a_round_trip() -> None:
    """DeviceAnomalyModel (full ensemble: forecaster and River HST), DeviceMonitor and the de-duplication window."""
    from agents.devices import STATE_VERSION, DeviceState

    state, ts, x = _device_state()
    blob = state.dump()
    assert blob[:3] == MAGIC and len(blob) < 64_000
    clone = DeviceState.load(blob)
    assert clone.recent == state.recent and clone.recent.seen((1999, float(ts[1999])))
    assert clone.monitor.alarms.active.keys() == state.monitor.alarms.active.keys()
    rules = RuleSet(None)
    for s in (state, clone):
        s.out = []
        for start in range(2000, 3000, 32):
            t, v = ts[start:start + 32], x[start:start + 32]
            res = s.model.score_learn_many(t, {"temperature": v, "humidity": v / 2})
            s.out.append(res.scores)
            for j in range(len(t)):
                s.out.append(s.monitor.reading(float(t[j]), {"temperature": float(v[j]) + 20 * (start > 2500)}, rules,
                                               float(res.scores[j]), bool(res.is_anomaly[j]), res.metrics[j]))
    assert any(isinstance(o, list) and o for o in state.out)  # alarms were raised after the restore
    for a, b in zip(state.out, clone.out, strict=True):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b
    del state.out, clone.out
    assert clone.dump() == state.dump()  # the same state, bit for bit
    with pytest.raises(StateFormatError, match=f"version {STATE_VERSION}"):
        DeviceState.load(StateCodec(ALARM_TYPES).dumps((1, {"device_id": "x"})))


def test_device_states_written_with_tree_nodes_still_restore() -> None:
    """HalfSpaceTrees were written as River node objects before they were written as arrays (`_hst_state`): such
    a checkpoint restores to the same trees and the same scores; malformed tree arrays are refused."""
    from river.anomaly.hst import HalfSpaceTrees

    from agents.devices import STATE_CODEC, STATE_VERSION, DeviceState
    from online_models.anomaly import state_types
    from schemas.state import StateType

    def as_nodes(hst: HalfSpaceTrees) -> dict:
        state = {**hst.__dict__, "limits": dict(hst.limits)}
        del state["_tree_nodes"]
        return state

    before = StateCodec(StateTypes(STATE_CODEC.types, StateTypes(StateType(HalfSpaceTrees, as_nodes))))
    state, ts, x = _device_state()
    old, new = before.dumps((STATE_VERSION, state), compress=True), state.dump()
    assert old != new and b"PaddedBranch" in zlib.decompress(old[5:]) and b"PaddedBranch" not in zlib.decompress(new[5:])
    a, b = DeviceState.load(old), DeviceState.load(new)
    assert a.model.hst.counter == b.model.hst.counter > 0 and a.dump() == b.dump() == new
    tail = {"temperature": x[2000:2400], "humidity": x[2000:2400] / 2}
    np.testing.assert_array_equal(a.model.score_learn_many(ts[2000:2400], tail).scores,
                                  b.model.score_learn_many(ts[2000:2400], tail).scores)
    heap = state_types._hst_state(state.model.hst)["heap"]
    for broken in ({**heap, "feature": heap["feature"] + 100}, {**heap, "l_mass": heap["l_mass"][:, :3]},
                   {**heap, "threshold": heap["threshold"].astype(np.float32)}, {**heap, "names": [1]}, {**heap, "r_mass": heap["r_mass"].astype(np.float64)}):
        with pytest.raises(ValueError, match="HalfSpaceTrees"):
            state_types._hst_restore(HalfSpaceTrees(), {**state_types._hst_state(state.model.hst), "heap": broken})


def test_recommender_users_items_and_global_state_round_trip() -> None:
    from online_models.recommender import OnlineRecommender, RecommenderConfig
    from online_models.recommender.state import STATE_TYPES
    from wharf.simulator import simulate_clicks

    model = OnlineRecommender(RecommenderConfig(seed=5))
    for ev in simulate_clicks(2500, seed=6, n_users=150, n_items=200):
        model.learn_one(ev)
    model.state.rng_state = model._rng.getstate()  # noqa: SLF001 - as the shard checkpoint takes it
    codec = StateCodec(STATE_TYPES)
    items = {k: model.checkpoint_item(st) for k, st in model.items.items()}  # rows by item id, as a shard writes them
    users, items, g = (codec.loads(codec.dumps(v)) for v in (dict(model.users), items, model.state))
    assert type(g.rng_state) is tuple and g.rng_state == model.state.rng_state
    clone = OnlineRecommender(model.config, users=users, items=items, state=g)
    probe = list(model.users)[:30] + ["nobody"]
    assert [clone.recommend(u, 10) for u in probe] == [model.recommend(u, 10) for u in probe]
    assert clone._rng.getstate() == model._rng.getstate()  # noqa: SLF001


def test_item_norm_with_its_alarm_book_round_trips() -> None:
    from agents.item_alarms import NORM_CODEC, ItemNorm, check_drop

    norm = ItemNorm()
    for i in range(40):
        norm.add(3600.0 * (i // 10) + i, 0.8 if i < 30 else -0.9)
        check_drop(norm, "bk-1", 3600.0 * (i // 10) + i)
    assert norm.book.active
    back = NORM_CODEC.loads(NORM_CODEC.dumps(norm))
    assert vars(back) | {"book": None} == vars(norm) | {"book": None}
    assert {k: vars(a) for k, a in back.book.active.items()} == {k: vars(a) for k, a in norm.book.active.items()}
    assert type(next(iter(back.book.active.values())).status) is AlarmStatus


# --- refusals ------------------------------------------------------------------------------------------------


def test_a_class_not_on_the_allow_list_is_refused_on_both_sides_with_where_it_was() -> None:
    monitor = DeviceMonitor("d-1", MonitorConfig())
    monitor.alarms.raise_("x", Severity.MINOR, 1.0, "m")
    with pytest.raises(StateFormatError, match="online_models.alarms:DeviceMonitor"):
        StateCodec(StateTypes(AlarmBook, Alarm)).dumps(monitor)
    blob = StateCodec(ALARM_TYPES).dumps({"m": monitor})
    narrow = StateCodec(StateTypes(DeviceMonitor, MonitorConfig, AlarmBook, Severity, AlarmStatus))  # no Alarm
    with pytest.raises(StateFormatError, match="online_models.alarms:Alarm' refused") as err:
        narrow.loads(blob)
    assert err.value.where == "DeviceMonitor > AlarmBook"


def test_pickles_and_compressed_pickles_are_refused_and_run_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    codec = StateCodec(ALARM_TYPES)
    for blob in (pickle.dumps(Marker(marker)), zlib.compress(pickle.dumps((1, Marker(marker))), 1)):
        with pytest.raises(StateFormatError, match="refused"):
            codec.loads(blob)
    assert not marker.exists()
    pickle.loads(pickle.dumps(Marker(marker)))  # the pickle is real: loaded by pickle, it runs
    assert marker.exists()


def test_truncated_and_corrupted_records_are_refused() -> None:
    state, _, _ = _device_state()
    from agents.devices import STATE_CODEC

    for compress in (False, True):
        blob = STATE_CODEC.dumps(state, compress=compress)
        for cut in list(range(0, 64)) + list(range(64, len(blob), max(1, len(blob) // 97))):
            with pytest.raises(StateFormatError):
                STATE_CODEC.loads(blob[:cut])
        with pytest.raises(StateFormatError):
            STATE_CODEC.loads(blob + b"\x00")
    rng = random.Random(1)
    blob = bytearray(STATE_CODEC.dumps(state))
    for _ in range(300):  # flipped bytes: either still a state (a changed number) or refused
        bad = bytearray(blob)
        bad[rng.randrange(5, len(bad))] ^= 1 << rng.randrange(8)
        try:
            STATE_CODEC.loads(bytes(bad))
        except StateFormatError:
            pass
    with pytest.raises(StateFormatError, match="version"):
        STATE_CODEC.loads(MAGIC + b"\x02\x00\xc0")
    with pytest.raises(StateFormatError, match="flags"):
        STATE_CODEC.loads(MAGIC + b"\x01\x80\xc0")


def _raw(value: object) -> bytes:
    """A record as an attacker could craft it: the header, then any msgpack."""
    return MAGIC + b"\x01\x00" + msgpack.packb(value, use_bin_type=True)


def test_crafted_structures_are_refused() -> None:
    E = msgpack.ExtType
    codec = StateCodec(ALARM_TYPES)
    cases = {
        "object dtype": E(10, bytes((3, 0, 1)) + b"|O8" + (1).to_bytes(8, "little") + b"\x00" * 8),
        "structured dtype": E(10, bytes((7, 0, 1)) + b"[('a',)" + (1).to_bytes(8, "little")),
        "shape and bytes disagree": E(10, bytes((3, 0, 1)) + b"<f8" + (10**6).to_bytes(8, "little") + b"\x00" * 8),
        "unknown ext": E(99, b""),
        "back-reference to nothing": E(12, (5).to_bytes(4, "little")),
        "marker out of place": [1, E(2, b"")],
        "marker alone": E(1, b"online_models.alarms:AlarmBook"),
        "dunder attribute": [E(1, b"online_models.alarms:AlarmBook"), {"__class__": 1}],
        "state not a dict": [E(1, b"online_models.alarms:AlarmBook"), [1, 2]],
        "not an enum member": [E(7, b"schemas.events:Severity"), "BOOM"],
        "object named as an enum": [E(7, b"online_models.alarms:AlarmBook"), "x"],
        "module of the standard library": [E(1, b"os:system"), {}],
        "defaultdict factory": [E(6, b"os.system"), {}],
    }
    for name, value in cases.items():
        with pytest.raises(StateFormatError):
            codec.loads(_raw(value))
            pytest.fail(name)
    with pytest.raises(StateFormatError, match="unhashable"):
        codec.loads(MAGIC + b"\x01\x00" + b"\x81\x91\x01\x02")  # {[1]: 2}
    with pytest.raises(StateFormatError, match="numbers only"):
        codec.dumps(np.array([object()]))


def test_limits_on_depth_size_and_entries() -> None:
    E = msgpack.ExtType
    codec = StateCodec(ALARM_TYPES, Limits(max_bytes=1 << 20, max_items=100_000, max_depth=8))
    nested: object = {}
    for _ in range(9):
        nested = [E(1, b"online_models.alarms:AlarmBook"), {"x": nested}]
    with pytest.raises(StateFormatError, match="nested over 8"):
        codec.loads(_raw(nested))
    with pytest.raises(StateFormatError):
        codec.loads(MAGIC + b"\x01\x00" + b"\x91" * 5000 + b"\xc0")  # 5,000 nested lists
    with pytest.raises(StateFormatError, match="over 100000 entries"):
        codec.loads(codec.dumps([[]] * 200_000))
    with pytest.raises(StateFormatError, match="over the limit"):
        codec.loads(codec.dumps(b"x" * (2 << 20)))
    bomb = MAGIC + b"\x01\x01" + zlib.compress(msgpack.packb(b"\x00" * (64 << 20)), 9)  # 64 kB that inflate to 64 MB
    assert len(bomb) < 100_000
    with pytest.raises(StateFormatError, match="decompresses to over"):
        codec.loads(bomb)


# --- fuzzing -------------------------------------------------------------------------------------------------

_NAMES = [b"online_models.alarms:AlarmBook", b"online_models.alarms:Alarm", b"schemas.events:Severity", b"os:system", b"x"]
_DTYPES = [b"<f8", b"|b1", b"<i4", b"|O8", b"<U3", b"zz"]
_ext = st.one_of(
    st.builds(msgpack.ExtType, st.integers(0, 20), st.binary(max_size=24)),
    st.builds(msgpack.ExtType, st.sampled_from([1, 7]), st.sampled_from(_NAMES)),
    st.builds(msgpack.ExtType, st.just(10), st.builds(lambda d, n, raw: bytes((len(d), 0, n)) + d + raw,
                                                         st.sampled_from(_DTYPES), st.integers(0, 3), st.binary(max_size=40))),
)
_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(), st.text(max_size=8),
                  st.binary(max_size=8), _ext)
_structure = st.recursive(_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.one_of(st.text(max_size=4), st.integers(-2**63, 2**63 - 1)), inner, max_size=4),
    st.tuples(_ext, inner), st.tuples(_ext, inner, inner)), max_leaves=30)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200), st.booleans())
def test_random_bytes_raise_nothing_but_state_format_error(data: bytes, with_header: bool) -> None:
    try:
        StateCodec(ALARM_TYPES).loads((MAGIC + b"\x01\x00" if with_header else b"") + data)
    except StateFormatError:
        pass


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_structure, st.booleans())
def test_random_msgpack_structures_raise_nothing_but_state_format_error(value: object, compress: bool) -> None:
    payload = msgpack.packb(value, use_bin_type=True)
    blob = MAGIC + (b"\x01\x01" + zlib.compress(payload) if compress else b"\x01\x00" + payload)
    try:
        StateCodec(ALARM_TYPES).loads(blob)
    except StateFormatError:
        pass


def test_a_device_written_before_the_drift_tail_existed_restores_into_the_bank() -> None:
    """Devices checkpointed before `drift_tail_e`, `drift_tail_alpha` and the per-metric `cu_peak`/`cu_beta`/`cu_nexc`
    existed take their defaults and fit the production bank with everything they learned (not a fresh model)."""
    from agents.devices import DeviceState
    from online_models.anomaly.bank import DeviceBank

    state, ts, x = _device_state()
    for name in ("drift_tail_e", "drift_tail_alpha"):
        del state.model.cfg.__dict__[name]
    for name in ("cu_peak", "cu_beta", "cu_nexc"):
        del state.model.__dict__[name]
    old = DeviceState.load(state.dump())
    assert old.model.cfg.drift_tail_e == 3.0 and old.model.cfg.drift_tail_alpha == 0.1
    np.testing.assert_array_equal(old.model.cu_nexc, np.zeros(2))
    bank = DeviceBank()
    bank.insert("dev-7", old.model)  # refused before: "the model's configuration differs from the bank's"
    learned = len(range(0, 2000, 32)) * 32  # what `_device_state` fed it
    assert bank.learned("dev-7") == learned
    bank.score_learn_batch(np.full(32, bank.slot("dev-7")), ts[2016:2048], {"temperature": x[2016:2048], "humidity": x[2016:2048] / 2})
    assert bank.learned("dev-7") == learned + 32
    with pytest.raises(StateFormatError, match="DeviceAnomalyModel"):
        state.model.__dict__.pop("names")
        DeviceState.load(state.dump())


def _bank_with_devices():
    """A production-configured bank (full ensemble) that learned NAB temperatures on two devices, one of them
    with a third metric."""
    from agents.devices import SETUP

    ts, x = _readings(3000)
    bank = SETUP.new_bank()
    for start in range(0, 2000, 50):
        t, v = ts[start:start + 50], x[start:start + 50]
        devs = np.r_[np.full(50, bank.slot("dev-a")), np.full(50, bank.slot("dev-b"))]
        extra = np.r_[np.full(50, np.nan), v[::-1]]
        bank.score_learn_batch(devs, np.r_[t, t], {"temperature": np.r_[v, v + 1], "humidity": np.r_[v / 2, v / 3], "co2": extra})
    return bank, ts, x


def _tail(bank, ts, x, lo: int = 2000, hi: int = 2600) -> np.ndarray:
    t, v = ts[lo:hi], x[lo:hi] + 15 * (np.arange(hi - lo) > 400)
    n = hi - lo
    devs = np.r_[np.full(n, bank.slot("dev-a")), np.full(n, bank.slot("dev-b"))]
    return bank.score_learn_batch(devs, np.r_[t, t], {"temperature": np.r_[v, v + 1], "humidity": np.r_[v / 2, v / 3],
                                                      "co2": np.r_[np.full(n, np.nan), v]}).scores


def test_bank_rows_round_trip_and_score_as_the_bank_and_as_a_model_checkpoint() -> None:
    """A device checkpointed as its bank rows (`DeviceRow`, what checkpoints write) scores on, restored into
    another bank, exactly as the bank it came from, and exactly as the same device checkpointed as a
    `DeviceAnomalyModel` (the form written before rows, still read)."""
    from agents.devices import SETUP, DeviceState
    from online_models.anomaly.bank import DeviceRow

    bank, ts, x = _bank_with_devices()
    restored, via_model = SETUP.new_bank(), SETUP.new_bank()
    for key in ("dev-b", "dev-a"):  # other slots than in the original bank
        st = DeviceState.new(key, 1)
        st.model = bank.row(key)
        blob = st.dump()
        assert b"DeviceAnomalyModel" not in zlib.decompress(blob[5:]) and b"PaddedBranch" not in zlib.decompress(blob[5:])
        back = DeviceState.load(blob)
        assert type(back.model) is DeviceRow and back.model.names == bank.names[bank.slot(key)]
        restored.insert(key, back.model)
        st.model = bank.extract(key, scoring=False)
        via_model.insert(key, DeviceState.load(st.dump()).model)
        assert restored.learned(key) == bank.learned(key) == 2000
        st.model = restored.row(key)
        assert st.dump() == blob  # the same state, bit for bit
    assert bank.row("dev-a").trees is not None and bank.row("dev-a").fc_buf.shape[1] == bank.cfg.lags + 3
    expected = _tail(bank, ts, x)
    assert (expected >= bank.cfg.min_threshold).any()  # the shift at 400 is scored as one
    np.testing.assert_array_equal(_tail(restored, ts, x), expected)
    np.testing.assert_array_equal(_tail(via_model, ts, x), expected)


def test_bank_rows_that_do_not_fit_are_refused() -> None:
    """A row is data from the changelog: one that does not fit the bank is a ValueError (the owner logs it and
    the device starts fresh), never a half-filled slot or an index error later."""
    import dataclasses

    from agents.devices import SETUP
    from online_models.anomaly.bank import DeviceRow

    bank, _, _ = _bank_with_devices()
    row = bank.row("dev-b")
    other = dataclasses.replace(row.cfg)
    other.hst_trees += 1
    broken = {
        "configuration": {"cfg": other}, "columns": {"ms_names": row.ms_names[::-1]},
        "ms": {"ms": row.ms[:, :-1]}, "ds": {"ds": row.ds.astype(np.float32)}, "names": {"names": ["a", "a", "b"]},
        "tree features": {"trees": ["nope:l"]}, "tree features unsorted": {"trees": row.trees[::-1]},
        "hl": {"hl": row.hl[:1]}, "masses without trees": {"trees": None}, "fc": {"fc": row.fc[:, :5]},
        "fc_buf": {"fc_nbuf": row.fc_nbuf + 1}, "ignored": {"ignored": -1},
    }
    fresh = SETUP.new_bank()
    for what, change in broken.items():
        with pytest.raises(ValueError, match="row"):
            fresh.insert("dev-b", dataclasses.replace(row, **change))
            pytest.fail(what)
    assert len(fresh) == 0
    with pytest.raises(ValueError, match="not a device's model"):
        fresh.insert("dev-b", {"names": []})
    from agents.devices import STATE_CODEC
    from schemas.state import StateType

    for odd in ({k: v for k, v in vars(row).items() if k != "hl"}, {**vars(row), "extra": 1}):
        writer = StateCodec(StateTypes(STATE_CODEC.types, StateTypes(StateType(DeviceRow, lambda r, odd=odd: odd))))
        with pytest.raises(StateFormatError, match="not the fields of a DeviceRow"):
            STATE_CODEC.loads(writer.dumps(row))
    assert vars(STATE_CODEC.loads(STATE_CODEC.dumps(row))).keys() == vars(row).keys()


def test_a_device_written_before_the_spatial_range_existed_restores_with_a_range_from_its_level() -> None:
    """A device checkpointed before `spatial_tol`/`spatial_e` and the per-metric range `sp_lo`/`sp_hi` existed gets
    the range its long level spans (not an empty one, which the next few readings would make too narrow) and keeps
    scoring in the bank: its next ordinary readings are no spatial anomaly."""
    from agents.devices import DeviceState
    from online_models.anomaly.bank import DeviceBank

    state, ts, x = _device_state()
    for name in ("spatial_tol", "spatial_e"):
        del state.model.cfg.__dict__[name]
    for name in ("sp_lo", "sp_hi"):
        del state.model.__dict__[name]
    old = DeviceState.load(state.dump())
    m = old.model
    assert m.cfg.spatial_tol == 0.05 and m.cfg.spatial_e == 7.0
    assert np.all(m.sp_lo < m.lg_mean) and np.all(m.sp_hi > m.lg_mean)
    np.testing.assert_allclose(m.sp_hi - m.lg_mean, 6.0 * 1.2533 * m.lg_mad)
    bank = DeviceBank()
    bank.insert("dev-7", m)
    res = bank.score_learn_batch(np.full(32, bank.slot("dev-7")), ts[2016:2048],
                                 {"temperature": x[2016:2048], "humidity": x[2016:2048] / 2})
    assert not res.is_anomaly.any()


@pytest.mark.parametrize("columns, options", [
    (("e_prev", "e_alert"), ("confirm_frac", "confirm_extreme", "rearm_frac")),  # before the confirmation rule
    (("e_alert",), ("rearm_frac",)),  # before the re-alert rule
])
def test_a_bank_row_written_before_a_device_column_restores_and_scores(columns: tuple, options: tuple) -> None:
    """A `DeviceRow` checkpointed before device columns existed (`e_prev`: `confirm_frac`/`confirm_extreme`;
    `e_alert`: `rearm_frac`) gets them (no previous row's or alert's evidence: 0) and the options' defaults, fits
    the bank, and scores as today's row with those columns at 0 does."""
    import dataclasses

    from agents.devices import SETUP, STATE_CODEC
    from online_models.anomaly import kernels as K
    from online_models.anomaly.bank import DeviceRow
    from schemas.state import StateType

    bank, ts, x = _bank_with_devices()
    row = bank.row("dev-a")
    cfg = dataclasses.replace(row.cfg)
    for name in options:
        del cfg.__dict__[name]
    cols = {"e_prev": K.E_PREV, "e_alert": K.E_ALERT}
    old = {**vars(row), "cfg": cfg, "ds_names": [n for n in row.ds_names if n not in columns],
           "ds": np.delete(row.ds, [cols[c] for c in columns])}
    writer = StateCodec(StateTypes(STATE_CODEC.types, StateTypes(StateType(DeviceRow, lambda r: old))))
    restored = STATE_CODEC.loads(writer.dumps(row))
    assert restored.ds_names == row.ds_names and all(restored.ds[cols[c]] == 0.0 for c in columns)
    assert restored.cfg.confirm_frac == 0.5 and restored.cfg.confirm_extreme == 2.0 and restored.cfg.rearm_frac == 0.9
    today = dataclasses.replace(row, ds=row.ds.copy())
    for c in columns:
        today.ds[cols[c]] = 0.0
    a, b = SETUP.new_bank(), SETUP.new_bank()
    a.insert("dev-a", restored)
    b.insert("dev-a", today)
    t, v = ts[2000:2400], x[2000:2400] + 15 * (np.arange(400) > 200)
    ra = a.score_learn_batch(np.full(400, a.slot("dev-a")), t, {"temperature": v, "humidity": v / 2}).scores
    rb = b.score_learn_batch(np.full(400, b.slot("dev-a")), t, {"temperature": v, "humidity": v / 2}).scores
    np.testing.assert_array_equal(ra, rb)
    assert (ra >= bank.cfg.min_threshold).any()


def _restore_row_without(bank, ts, x, drop: tuple[str, ...]):  # noqa: ANN001, ANN202
    """dev-a's `DeviceRow` written without the metric columns `drop` (and without the ramp level's settings when
    those columns go), restored: every column in the bank's order, the kept ones unchanged, and it still scores in a
    bank (a step alerts)."""
    import dataclasses

    from agents.devices import SETUP, STATE_CODEC
    from online_models.anomaly.bank import DeviceRow
    from schemas.state import StateType

    row = bank.row("dev-a")
    cut = [row.ms_names.index(c) for c in drop]
    old = {**vars(row), "ms_names": [n for n in row.ms_names if n not in drop], "ms": np.delete(row.ms, cut, axis=1)}
    if "rl_mean" in drop:
        cfg = dataclasses.replace(row.cfg)
        for name in ("ramp_trend_alpha", "ramp_margin"):
            del cfg.__dict__[name]
        old["cfg"] = cfg
    writer = StateCodec(StateTypes(STATE_CODEC.types, StateTypes(StateType(DeviceRow, lambda r: old))))
    restored = STATE_CODEC.loads(writer.dumps(row))
    assert restored.ms_names == row.ms_names and restored.ms.shape == row.ms.shape
    keep = [i for i in range(row.ms.shape[1]) if i not in cut]
    np.testing.assert_array_equal(restored.ms[:, keep], row.ms[:, keep])
    a = SETUP.new_bank()
    a.insert("dev-a", restored)
    t, v = ts[2000:2400], x[2000:2400] + 15 * (np.arange(400) > 200)
    ra = a.score_learn_batch(np.full(400, a.slot("dev-a")), t, {"temperature": v, "humidity": v / 2}).scores
    assert (ra >= bank.cfg.min_threshold).any()
    return restored


def test_a_device_written_before_the_ramp_level_restores_with_it_started_as_the_plain_level() -> None:
    """A `DeviceRow` and a `DeviceAnomalyModel` checkpointed before the ramp level's metric columns existed get them
    (level and spread from the plain level, no trend, noise from the long level), fit the bank, and keep scoring: a
    step still alerts."""
    from agents.devices import DeviceState
    from online_models.anomaly import kernels as K

    ramp = ("rl_mean", "rl_mad", "rl_slope", "df_mad")
    bank, ts, x = _bank_with_devices()
    row = bank.row("dev-a")
    restored = _restore_row_without(bank, ts, x, ramp)
    assert restored.cfg.ramp_trend_alpha == 0.02 and restored.cfg.ramp_margin == 2.0
    np.testing.assert_array_equal(restored.ms[:, K.RL_MEAN], row.ms[:, K.LV_MEAN])
    np.testing.assert_array_equal(restored.ms[:, K.RL_MAD], row.ms[:, K.LV_MAD])
    np.testing.assert_array_equal(restored.ms[:, K.DF_MAD], row.ms[:, K.LG_MAD])
    assert not restored.ms[:, K.RL_SLOPE].any()

    state, _, _ = _device_state()
    for name in ("ramp_trend_alpha", "ramp_margin"):
        del state.model.cfg.__dict__[name]
    for name in ramp:
        del state.model.__dict__[name]
    m = DeviceState.load(state.dump()).model
    np.testing.assert_array_equal(m.rl_mean, m.lv_mean)
    np.testing.assert_array_equal(m.df_mad, m.lg_mad)
    assert not m.rl_slope.any() and m.cfg.ramp_margin == 2.0


def test_a_device_written_before_the_drift_anchor_restores_with_none() -> None:
    """A `DeviceRow` checkpointed before the drift's anchor scale (`cu_anc`) existed, and one from before the ramp
    level too, get the column in the bank's order, 0 (no excursion anchored), fit the bank and keep scoring; a
    model checkpoint without the array gets zeros."""
    from agents.devices import DeviceState
    from online_models.anomaly import kernels as K

    bank, ts, x = _bank_with_devices()
    for drop in (("cu_anc",), ("rl_mean", "rl_mad", "rl_slope", "df_mad", "cu_anc")):
        assert not _restore_row_without(bank, ts, x, drop).ms[:, K.CU_ANC].any()

    state, _, _ = _device_state()
    del state.model.__dict__["cu_anc"]
    m = DeviceState.load(state.dump()).model
    assert m.cu_anc.shape == m.cu_beta.shape and not m.cu_anc.any()
