"""A device's state, as its owner keeps it and checkpoints it: anomaly model, alarms, de-duplication window.

All the sensor topics are keyed by device_id with the same partition count, so one device's events land on one
partition number everywhere, and the worker that owns that partition owns the device (`agents/scoring.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import numpy as np

from online_models.alarms import STATE_TYPES as ALARM_STATE_TYPES
from online_models.alarms import DeviceMonitor
from online_models.anomaly import DeviceAnomalyModel
from online_models.anomaly.bank import DeviceRow
from online_models.anomaly.state_types import STATE_TYPES as ANOMALY_STATE_TYPES
from online_models.sensing import SensorSetup
from schemas.state import StateCodec, StateFormatError, StateType, StateTypes
from streams.runtime.app import settings
from streams.runtime.recent import RecentKeys

DEVICE_DEDUP_KEYS = 1024  # per device, in the checkpointed state (the raw path keeps its own window)
STATE_VERSION = 2  # 2: state format (schemas.state); 1: pickled


SETUP = SensorSetup.from_settings(settings)
RULES = SETUP.rules


@dataclass
class DeviceState:
    """Everything the owner of a device keeps; written to the changelog at each checkpoint (`schemas.state`)."""

    device_id: str
    partition: int
    model: DeviceAnomalyModel | DeviceRow | None  # None while the owner's `DeviceBank` holds it; set for `dump` (its
    # rows, `DeviceBank.row`) and from `load` (a `DeviceAnomalyModel` in checkpoints written before rows)
    monitor: DeviceMonitor
    recent: RecentKeys[tuple[int, float]] = field(default_factory=lambda: RecentKeys(DEVICE_DEDUP_KEYS))  # (seq, ts) of the last readings

    @classmethod
    def new(cls, device_id: str, partition: int) -> DeviceState:
        return cls(device_id, partition, SETUP.new_model(), SETUP.new_monitor(device_id))

    def copy(self) -> DeviceState:
        """A copy without the model (the bank's `snapshot` copies it) that later readings leave as it is: taken
        under the owner's lock for a checkpoint that is encoded off it."""
        return DeviceState(self.device_id, self.partition, None, self.monitor.copy(), self.recent.copy())

    def dump(self) -> bytes:
        return STATE_CODEC.dumps((STATE_VERSION, self), compress=True)

    @staticmethod
    def load(blob: bytes) -> DeviceState:
        """Raises StateFormatError for anything but this version's state of a device (pickles included)."""
        found = STATE_CODEC.loads(blob)
        if type(found) is not tuple or len(found) != 2 or found[0] != STATE_VERSION or type(found[1]) is not DeviceState:
            raise StateFormatError(f"not a device state of version {STATE_VERSION}")
        return found[1]


def _device_state(st: DeviceState) -> dict[str, Any]:
    """The de-duplication window as two arrays: as 1,024 (seq, ts) tuples it took half of a state's decoding time.
    The format is the one the window had as a dict (keys oldest first), so states written before it was a
    `RecentKeys` still load. Built and checked by columns (`map`, `set` of types: 45 against 70 us for 300 keys,
    each checkpoint encodes every changed device's window)."""
    keys = list(st.recent)
    seqs, tss = list(map(_first, keys)), list(map(_second, keys))
    if set(map(len, keys)) <= _PAIR and set(map(type, seqs)) <= _INT and set(map(type, tss)) <= _FLOAT:
        try:
            seq_array = np.array(seqs, np.int64)
        except OverflowError:  # 2**63 or more: kept as tuples
            pass
        else:
            if not seqs or seq_array.min() >= 0:
                return {**st.__dict__, "recent": (seq_array, np.array(tss, np.float64))}
    return {**st.__dict__, "recent": dict.fromkeys(keys)}  # kept as tuples


_first, _second = itemgetter(0), itemgetter(1)
_PAIR, _INT, _FLOAT = frozenset((2,)), frozenset((int,)), frozenset((float,))


def _set_device_state(st: DeviceState, state: Any) -> None:
    recent = state.get("recent") if type(state) is dict else None
    if type(recent) is tuple:
        seqs, tss = recent
        if not (type(seqs) is type(tss) is np.ndarray and seqs.dtype == np.int64 and tss.dtype == np.float64
                and seqs.ndim == 1 and seqs.shape == tss.shape):
            raise ValueError("a malformed de-duplication window")
        state = {**state, "recent": RecentKeys(DEVICE_DEDUP_KEYS, zip(seqs.tolist(), tss.tolist()))}
    elif type(recent) is dict:
        if not all(type(key) is tuple and len(key) == 2 for key in recent):  # else the next checkpoint fails on it
            raise ValueError("a de-duplication window whose keys are not (seq, ts) pairs")
        state = {**state, "recent": RecentKeys(DEVICE_DEDUP_KEYS, recent)}
    if type(state) is not dict or set(state) != {"device_id", "partition", "model", "monitor", "recent"}:
        raise ValueError("not the fields of a DeviceState")
    st.__dict__.update(state)


STATE_CODEC = StateCodec(StateTypes(StateType(DeviceState, _device_state, _set_device_state)) | ANOMALY_STATE_TYPES | ALARM_STATE_TYPES)
