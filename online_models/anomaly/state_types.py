"""The classes a device's anomaly model is made of: the allow-list its checkpoints are decoded with
(`schemas.state`), and an adapter for River's HalfSpaceTrees: its `limits` default to a callable factory, and
its flat node lists (the same nodes as its trees) are rebuilt rather than stored."""

from __future__ import annotations

import functools
import random
from collections import defaultdict
from typing import Any

import numpy as np
from river.anomaly.hst import HalfSpaceTrees
from river.tree.padded import PaddedBranch, PaddedLeaf

from online_models.anomaly.bank import MS_NAMES, DeviceRow
from online_models.anomaly.detectors import SilenceDetector
from online_models.anomaly.forecaster import OnlineMLPForecaster
from online_models.anomaly.model import AnomalyConfig, DeviceAnomalyModel
from online_models.anomaly.stats import GaussianTail
from schemas.state import StateType, StateTypes


_BRANCH = frozenset({"children", "feature", "threshold", "l_mass", "r_mass"})
_LEAF = frozenset({"l_mass", "r_mass"})


def _hst_state(hst: HalfSpaceTrees) -> dict[str, Any]:
    """The trees as arrays in heap order (`_heap`) where they allow it: as node objects they took two thirds of a
    device checkpoint's encoding time. States with `trees` (node objects) are still read."""
    state = {**hst.__dict__, "limits": dict(hst.limits)}
    state.pop("_tree_nodes", None)  # absent from a model extracted only to be encoded (`DeviceBank.extract`)
    heap = _heap(state["trees"])
    if heap is not None:
        del state["trees"]
        state["heap"] = heap
    return state


def _heap(trees: list) -> dict[str, Any] | None:
    """Trees whose branches all come before their leaves in breadth-first order (River's padded trees), with the
    same number of branches, as arrays: node k's children are nodes 2k+1 and 2k+2. None for anything else."""
    if type(trees) is not list or not trees:
        return None
    names: dict[str, int] = {}
    feature, threshold, l_mass, r_mass = [], [], [], []
    try:
        for tree in trees:
            nodes = [tree]
            f, t = [], []
            i = 0
            while i < len(nodes) and type(nodes[i]) is PaddedBranch:
                n = nodes[i]
                nodes.extend(n.children)
                f.append(names.setdefault(n.feature, len(names)))
                t.append(n.threshold)
                i += 1
            if len(nodes) != 2 * i + 1 or any(type(n) is not PaddedLeaf for n in nodes[i:]) or \
                    any(len(n.__dict__) != 2 for n in nodes[i:]) or any(len(n.__dict__) != 5 for n in nodes[:i]):
                return None  # not a padded tree, or nodes with more than River puts in them
            feature.append(f)
            threshold.append(t)
            l_mass.append([n.l_mass for n in nodes])
            r_mass.append([n.r_mass for n in nodes])
    except (AttributeError, TypeError):  # a node without the attributes, an unhashable feature
        return None
    if len(names) and not all(type(n) is str for n in names):
        return None
    out = {"names": list(names), "feature": np.array(feature, np.int64), "threshold": np.array(threshold),
           "l_mass": np.array(l_mass), "r_mass": np.array(r_mass)}
    if out["threshold"].dtype != np.float64 or out["l_mass"].dtype != np.int64 or out["r_mass"].dtype != np.int64:
        return None  # e.g. float masses: kept as node objects, exactly
    return out


def _trees(heap: Any) -> list:
    """`_heap`'s arrays back as River nodes; ValueError for anything malformed."""
    if type(heap) is not dict or heap.keys() != {"names", "feature", "threshold", "l_mass", "r_mass"} or \
            type(heap["names"]) is not list or not all(type(n) is str for n in heap["names"]):
        raise ValueError("not HalfSpaceTrees arrays")
    feature, threshold, l_mass, r_mass = (heap[k] for k in ("feature", "threshold", "l_mass", "r_mass"))
    if not all(type(a) is np.ndarray and a.ndim == 2 for a in (feature, threshold, l_mass, r_mass)) or \
            feature.dtype != np.int64 or threshold.dtype != np.float64 or l_mass.dtype != np.int64 or r_mass.dtype != np.int64 or \
            feature.shape != threshold.shape or l_mass.shape != r_mass.shape or \
            l_mass.shape != (feature.shape[0], 2 * feature.shape[1] + 1) or \
            (feature.size and (feature.min() < 0 or feature.max() >= len(heap["names"]))):
        raise ValueError("malformed HalfSpaceTrees arrays")
    names = heap["names"]
    inner = feature.shape[1]
    trees = []
    for f, t, lm, rm in zip(feature.tolist(), threshold.tolist(), l_mass.tolist(), r_mass.tolist()):
        nodes: list = [None] * inner + [PaddedLeaf(l_mass=lm[k], r_mass=rm[k]) for k in range(inner, 2 * inner + 1)]
        for k in range(inner - 1, -1, -1):  # children before parents
            nodes[k] = PaddedBranch(nodes[2 * k + 1], nodes[2 * k + 2], names[f[k]], t[k], lm[k], rm[k])
        trees.append(nodes[0])
    return trees


def _hst_restore(hst: HalfSpaceTrees, state: Any) -> None:
    """As River builds it: `limits` is a defaultdict of (0, 1) ranges (the factory is code: never in the data)."""
    if type(state) is dict and "heap" in state and "trees" not in state:
        state = {**state, "trees": _trees(state["heap"])}
        del state["heap"]
    if type(state) is not dict or type(state.get("limits")) is not dict or type(state.get("trees")) is not list or \
            any(type(k) is not str or k.startswith("__") for k in state) or \
            not all(type(t) in (PaddedBranch, PaddedLeaf) for t in state["trees"]):
        raise ValueError("not a HalfSpaceTrees state")
    hst.__dict__.update(state)
    hst.limits = defaultdict(functools.partial(tuple, (0.0, 1.0)), state["limits"])
    hst._tree_nodes = [list(t.iter_dfs()) for t in hst.trees]  # noqa: SLF001 - as River builds them


def _forecaster_state(fc: OnlineMLPForecaster) -> dict[str, Any]:
    """The samples queued for the next training step as one array each, not one per learned block: a device that
    learns a reading per batch queued up to `train_every` tiny arrays, and each cost the encoder as much as the
    weights. Restored, the one-array lists train exactly as the many did (they are concatenated first)."""
    state = dict(fc.__dict__)
    del state["_queued"]  # derived from `buf_y` (`_forecaster_upgrade`): the format is as before it existed
    if len(fc.buf_x) > 1:
        state["buf_x"], state["buf_y"] = [np.concatenate(fc.buf_x)], [np.concatenate(fc.buf_y)]
    return state


def _forecaster_upgrade(state: dict) -> dict:
    """The count of queued samples is not stored: it is the length of the queued targets."""
    return {**state, "_queued": sum(len(b) for b in state.get("buf_y", ()))}


_DEFAULT_CONFIG = AnomalyConfig()
# Per-metric arrays added after devices were first checkpointed, and what a device written before them starts with:
# the drift tail of ended excursions (December 2026) starts with none learned, as a new metric does.
_ADDED_METRIC_ARRAYS = ("cu_peak", "cu_beta", "cu_nexc", "cu_anc")


def _config_upgrade(state: dict) -> dict:
    """A configuration written before a field existed takes that field's default, so that the device fits the bank
    (`DeviceBank.insert` wants the bank's configuration) and keeps what it learned instead of starting over."""
    return {**state, **{name: value for name, value in vars(_DEFAULT_CONFIG).items() if name not in state}}


# The range of the readings (spatial anomaly, December 2026) cannot start empty on a device that has been scored for a
# while: it would be rebuilt from the next few readings and then call ordinary noise out of range. It starts as the
# long level's clipping range (6 robust spreads either side), a conservative stand-in for the range it has seen.
_RANGE_SPREADS = 6.0


def _model_upgrade(state: dict) -> dict:
    """A device written before a per-metric array existed gets it with the new metric's starting value (zeros), and
    the range of its readings from its long level."""
    names = state.get("names")
    if type(names) is not list:
        raise ValueError("not a DeviceAnomalyModel state: no metric names")
    out = {**state, **{name: np.zeros(len(names)) for name in _ADDED_METRIC_ARRAYS if name not in state}}
    if "sp_lo" not in state or "sp_hi" not in state:
        mean, mad, n = (np.asarray(state.get(k, np.zeros(len(names))), dtype=float) for k in ("lg_mean", "lg_mad", "lg_n"))
        half = np.where(n > 0, _RANGE_SPREADS * 1.2533 * mad, np.nan)
        out["sp_lo"], out["sp_hi"] = mean - half, mean + half
    out.setdefault("e_prev", 0.0)  # the previous row's evidence (confirm_frac, December 2026): none yet
    out.setdefault("e_alert", 0.0)  # the last alert's evidence (rearm_frac, December 2026): none yet
    for name, value in _ramp_start({k: state.get(k) for k in _RAMP_FROM}, len(names)).items():
        out.setdefault(name, value)
    return out


# The ramp level (December 2026) on a device written before it: it starts as the plain level (its spread too, so it
# does not speak for `level` until it has predicted better), and its noise floor from the long level, as before.
_RAMP_FROM = ("lv_mean", "lv_mad", "lg_mad")
_RAMP_COLS = ("rl_mean", "rl_mad", "rl_slope", "df_mad")


def _ramp_start(cols: dict, k: int) -> dict[str, np.ndarray]:
    lv_mean, lv_mad, lg_mad = (np.asarray(cols[c] if cols[c] is not None else np.zeros(k), dtype=float) for c in _RAMP_FROM)
    return {"rl_mean": lv_mean.copy(), "rl_mad": lv_mad.copy(), "rl_slope": np.zeros(k), "df_mad": lg_mad.copy()}


# Device columns added to `DeviceRow.ds` after rows were first checkpointed, and their starting values.
_ADDED_DEVICE_COLUMNS = {"e_prev": 0.0, "e_alert": 0.0}


def _row_upgrade(state: dict) -> dict:
    """A row written before a device column existed gets it (appended, as the bank's layout appends it); one written
    before the ramp level's metric columns gets them after its fixed metric columns, started as `_ramp_start` says."""
    state = _row_upgrade_ms(state)
    names, ds = state.get("ds_names"), state.get("ds")
    if type(names) is not list or type(ds) is not np.ndarray or ds.ndim != 1:
        return state
    missing = [c for c in _ADDED_DEVICE_COLUMNS if c not in names]
    if not missing:
        return state
    return {**state, "ds_names": names + missing,
            "ds": np.concatenate([ds, np.array([_ADDED_DEVICE_COLUMNS[c] for c in missing], dtype=ds.dtype)])}


def _row_upgrade_ms(state: dict) -> dict:
    """Fixed metric columns added after rows were first checkpointed, put in the bank's order: the ramp level's
    (started as `_ramp_start` says) and the drift's anchor scale (`cu_anc`, December 2026: none yet, 0)."""
    names, ms = state.get("ms_names"), state.get("ms")
    if type(names) is not list or type(ms) is not np.ndarray or ms.ndim != 2 or ms.shape[1] < len(names):
        return state
    missing = [c for c in MS_NAMES if c not in names]
    if not missing or not set(missing) <= {*_RAMP_COLS, "cu_anc"} or not all(c in names for c in _RAMP_FROM) \
            or not set(names) <= set(MS_NAMES):
        return state
    start = _ramp_start({c: ms[:, names.index(c)] for c in _RAMP_FROM}, ms.shape[0])
    cols = [ms[:, names.index(c)] if c in names else start.get(c, np.zeros(ms.shape[0])) for c in MS_NAMES]
    fixed = np.stack(cols, axis=1).astype(ms.dtype)
    return {**state, "ms_names": list(MS_NAMES), "ms": np.concatenate([fixed, ms[:, len(names):]], axis=1)}


_ROW_FIELDS = frozenset(DeviceRow.__dataclass_fields__)


def _row_restore(row: DeviceRow, state: Any) -> None:
    """The fields, all of them and no others; what they hold is checked where the row goes (`DeviceBank.insert`)."""
    if type(state) is not dict or state.keys() != _ROW_FIELDS:
        raise ValueError("not the fields of a DeviceRow")
    row.__dict__.update(state)


STATE_TYPES = StateTypes(StateType(DeviceRow, setstate=_row_restore, upgrade=_row_upgrade), StateType(DeviceAnomalyModel, upgrade=_model_upgrade), StateType(AnomalyConfig, upgrade=_config_upgrade),
                         StateType(OnlineMLPForecaster, _forecaster_state, upgrade=_forecaster_upgrade), SilenceDetector, GaussianTail,
                         random.Random, StateType(HalfSpaceTrees, _hst_state, _hst_restore), PaddedBranch, PaddedLeaf)
