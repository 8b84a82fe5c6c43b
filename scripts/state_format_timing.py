"""Encode + decode time of checkpointed state: pickle (as checkpoints were written before) against Wharf's state
format (`schemas.state`), in the same run. `WHARF_CONFIG=tests/wharf-test.toml python scripts/state_format_timing.py`
(agents.devices reads the settings)."""

from __future__ import annotations

import copy
import pickle
import time
import zlib
from collections.abc import Callable
from operator import attrgetter
from typing import Any

import numpy as np

from online_models.anomaly import RuleSet
from online_models.recommender import ItemState, OnlineRecommender, RecommenderConfig, UserState
from online_models.recommender.state import STATE_TYPES as RECOMMENDER_TYPES
from schemas.state import StateCodec
from wharf.simulator import ShopConfig, ShopSimulator


def best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _compact_pickle(obj: Any) -> tuple[Any, ...]:
    """The reducer the recommender's users and items had while checkpoints were pickles (slot values, raw factors)."""
    cls = type(obj)
    values = attrgetter(*cls.__slots__)(obj)
    i = cls.__slots__.index("factors")
    f = values[i]
    if f is not None:
        values = (*values[:i], f.tobytes(), *values[i + 1:])
    return _rebuild, (cls, values)


def _rebuild(cls: type, values: tuple[Any, ...]) -> Any:
    obj = object.__new__(cls)
    for name, value in zip(cls.__slots__, values, strict=True):
        object.__setattr__(obj, name, value)
    if isinstance(obj.factors, bytes):
        obj.factors = np.frombuffer(obj.factors, dtype=np.float32).copy()
    return obj


def pieces(entries: dict[str, Any], size: int = 50) -> list[dict[str, Any]]:
    items = list(entries.items())
    return [dict(items[i:i + size]) for i in range(0, len(items), size)]


def compare(name: str, parts: list[Any], ours: Callable[[Any], bytes], back: Callable[[bytes], Any],
            theirs: Callable[[Any], bytes], unpickle: Callable[[bytes], Any], pickle_reducers: dict | None = None) -> None:
    import copyreg

    for cls, fn in (pickle_reducers or {}).items():
        copyreg.pickle(cls, fn)
    try:
        blobs = [theirs(p) for p in parts]
        p_enc = best(lambda: [theirs(p) for p in parts])
        p_dec = best(lambda: [unpickle(b) for b in blobs])
    finally:
        for cls in pickle_reducers or {}:
            copyreg.dispatch_table.pop(cls, None)
    mine = [ours(p) for p in parts]
    s_enc = best(lambda: [ours(p) for p in parts])
    s_dec = best(lambda: [back(b) for b in mine])
    print(f"{name:28s} pickle enc {p_enc * 1e3:6.0f} ms dec {p_dec * 1e3:6.0f} ms {sum(map(len, blobs)) / 1e6:5.1f} MB | "
          f"state format enc {s_enc * 1e3:6.0f} ms dec {s_dec * 1e3:6.0f} ms {sum(map(len, mine)) / 1e6:5.1f} MB | "
          f"enc+dec x{(s_enc + s_dec) / (p_enc + p_dec):.2f}")


def _pickle(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def main() -> None:
    rec = OnlineRecommender(RecommenderConfig())
    for e in ShopSimulator(ShopConfig(seed=0, n_items=6000, n_users=40000)).events(60_000):
        rec.learn_one(e)
    users = dict(list(rec.users.items())[:5000])
    items = dict(list(rec.items.items())[:5000])
    codec = StateCodec(RECOMMENDER_TYPES)
    compact = {UserState: _compact_pickle, ItemState: _compact_pickle}
    print(f"recommender after 60,000 simulated clicks, in pieces of 50 entries (streams/state/deltalog.py); "
          f"pickle with the compact reducer checkpoints used")
    for name, entries in (("users", users), ("items", items)):
        compare(f"{len(entries)} recommender {name}", pieces(entries), codec.dumps, codec.loads, _pickle, pickle.loads, compact)

    from agents.devices import DeviceState

    rng = np.random.default_rng(0)
    rules = RuleSet(None)
    learned = []
    for d in range(50):  # 50 learned devices (full ensemble), each written 20 times under other ids: 1,000 states
        st = DeviceState.new(f"d{d}", 0)
        ts = 1.7e9 + np.arange(1100) * 10.0
        for s in range(0, 1100, 32):
            t = ts[s:s + 32]
            x = 4 + np.sin(t / 3000) + 0.1 * rng.normal(size=len(t))
            r = st.model.score_learn_many(t, {"temperature": x, "humidity": 50 + x})
            for j, tj in enumerate(t):
                st.is_duplicate(s + j, float(tj))
                st.monitor.reading(float(tj), {"temperature": float(x[j])}, rules, float(r.scores[j]), bool(r.is_anomaly[j]), r.metrics[j])
        learned.append(st)
    states = [copy.deepcopy(learned[i % 50]) for i in range(1000)]
    compare("1000 device states", states, DeviceState.dump, DeviceState.load,
            lambda st: zlib.compress(_pickle((1, st)), 1), lambda b: pickle.loads(zlib.decompress(b)))


if __name__ == "__main__":
    main()
