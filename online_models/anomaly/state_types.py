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

from online_models.anomaly.detectors import SilenceDetector
from online_models.anomaly.forecaster import OnlineMLPForecaster
from online_models.anomaly.model import AnomalyConfig, DeviceAnomalyModel
from online_models.anomaly.stats import GaussianTail
from schemas.state import StateType, StateTypes


def _hst_state(hst: HalfSpaceTrees) -> dict[str, Any]:
    state = {**hst.__dict__, "limits": dict(hst.limits)}
    del state["_tree_nodes"]
    return state


def _hst_restore(hst: HalfSpaceTrees, state: Any) -> None:
    """As River builds it: `limits` is a defaultdict of (0, 1) ranges (the factory is code: never in the data)."""
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
    if len(fc.buf_x) > 1:
        state["buf_x"], state["buf_y"] = [np.concatenate(fc.buf_x)], [np.concatenate(fc.buf_y)]
    return state


STATE_TYPES = StateTypes(DeviceAnomalyModel, AnomalyConfig, StateType(OnlineMLPForecaster, _forecaster_state), SilenceDetector, GaussianTail,
                         random.Random, StateType(HalfSpaceTrees, _hst_state, _hst_restore), PaddedBranch, PaddedLeaf)
