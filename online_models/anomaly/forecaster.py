"""A tiny MLP forecaster trained online in mini-batches.

Why this shape: per-event backprop is far too slow for 20k readings/s, so the
network *predicts* every event with its weights (a 2-layer MLP is ~2 us in
NumPy) and *trains* only every ``train_every`` events, on the samples collected
since the last step. The training step's gradients are written out by hand
(two layers, tanh, Huber loss): PyTorch's autograd gave the same numbers but
cost ~0.3 ms a step in call overhead and ~500 MB of RSS in every sensor worker
that imported it (tests/test_anomaly_models.py checks them against autograd).
All state (weights and Adam moments) lives in small float32 NumPy arrays, so
the model checkpoints in a few KB (`schemas.state`) and a round trip gives identical predictions.
Training is deterministic (no sampling), so replays are reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

class OnlineMLPForecaster:
    """Predicts the next normalised value from the last ``lags`` normalised values + time of day."""

    def __init__(self, lags: int = 8, hidden: int = 16, lr: float = 3e-3, train_every: int = 32,
                 epochs: int = 2, seed: int = 0) -> None:
        self.lags = lags
        self.hidden = hidden
        self.lr = lr
        self.train_every = train_every
        self.epochs = epochs
        rng = np.random.default_rng(seed)
        d = lags + 2
        self.params = [
            (rng.standard_normal((d, hidden)) / math.sqrt(d)).astype(np.float32),
            np.zeros(hidden, np.float32),
            (rng.standard_normal((hidden, 1)) / math.sqrt(hidden) * 0.1).astype(np.float32),
            np.zeros(1, np.float32),
        ]
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.steps = 0
        self.buf_x: list[np.ndarray] = []
        self.buf_y: list[np.ndarray] = []
        self._queued = 0  # samples in `buf_y`: summing the blocks each call cost ~20 us at a reading a block (not state)

    def snapshot(self) -> OnlineMLPForecaster:
        """A copy that later learning leaves as it is, in microseconds (a deepcopy took ~0.3 ms): learning
        replaces the arrays of `params`, `m`, `v` and the buffers, never writes into them, so copying the lists is enough."""
        out = object.__new__(OnlineMLPForecaster)
        out.__dict__.update(self.__dict__)
        out.params, out.m, out.v = list(self.params), list(self.m), list(self.v)
        out.buf_x, out.buf_y = list(self.buf_x), list(self.buf_y)
        return out

    @staticmethod
    def shapes(lags: int, hidden: int) -> list[tuple[int, ...]]:
        """The shapes of `params` (and of `m`, `v`) that `__init__` makes: w1, b1, w2, b2."""
        return [(lags + 2, hidden), (hidden,), (hidden, 1), (1,)]

    @classmethod
    def flat_size(cls, lags: int, hidden: int) -> int:
        """Length of `flat()`: params, m and v."""
        return 3 * sum(math.prod(shape) for shape in cls.shapes(lags, hidden))

    def flat(self) -> np.ndarray:
        """Weights and Adam moments (params, then m, then v) as one float32 vector: a bank row's checkpoint form."""
        return np.concatenate([a.reshape(-1) for a in self.params + self.m + self.v])

    def load_flat(self, flat: np.ndarray) -> None:
        """The inverse of `flat` (copies: the arrays are the forecaster's own)."""
        arrays, at = [], 0
        for shape in self.shapes(self.lags, self.hidden) * 3:
            n = math.prod(shape)
            arrays.append(flat[at:at + n].reshape(shape).copy())
            at += n
        self.params, self.m, self.v = arrays[:4], arrays[4:8], arrays[8:]

    def queued(self) -> np.ndarray:
        """The samples waiting for the next training step as one (samples, lags + 3) float32 array: inputs, then
        target."""
        if not self.buf_y:
            return np.zeros((0, self.lags + 3), np.float32)
        return np.column_stack([np.concatenate(self.buf_x), np.concatenate(self.buf_y)]).astype(np.float32, copy=False)

    def load_queued(self, samples: np.ndarray) -> None:
        """The inverse of `queued` (copies)."""
        self.buf_x, self.buf_y = ([samples[:, :-1].copy()], [samples[:, -1].copy()]) if len(samples) else ([], [])
        self._queued = len(samples)

    @staticmethod
    def inputs(lag_values: list[float], ts: float) -> np.ndarray:
        ang = (ts % 86400.0) / 86400.0 * 2.0 * math.pi
        return np.array([*lag_values, math.sin(ang), math.cos(ang)], dtype=np.float32)

    def predict(self, x: np.ndarray) -> float:
        w1, b1, w2, b2 = self.params
        h = np.tanh(x @ w1 + b1)
        return float(h @ w2[:, 0] + b2[0]) + float(x[self.lags - 1])  # residual: predict the change

    def predict_many(self, xs: np.ndarray) -> np.ndarray:
        w1, b1, w2, b2 = self.params
        h = np.tanh(xs @ w1 + b1)
        return (h @ w2 + b2)[:, 0] + xs[:, self.lags - 1]

    def learn(self, x: np.ndarray, y: float) -> None:
        """Queue one (inputs, target); every ``train_every`` samples do ``epochs`` Adam steps on them."""
        self.learn_many(np.asarray(x, dtype=np.float32)[None, :], np.array([y], dtype=np.float32))

    def learn_many(self, xs: np.ndarray, ys: np.ndarray) -> None:
        """Queue a block of (inputs, targets); trains whenever ``train_every`` samples are queued."""
        if self.queue_many(xs, ys):
            train_many([self])

    def queue_many(self, xs: np.ndarray, ys: np.ndarray) -> bool:
        """Queue a block of (inputs, targets) without training; True once ``train_every`` samples are queued: the
        caller then trains it (`train_many`, with the others due at the same point) before its next prediction."""
        ys = np.asarray(ys, dtype=np.float32)
        self.buf_x.append(np.asarray(xs, dtype=np.float32))
        self.buf_y.append(ys)
        self._queued += len(ys)
        return self._queued >= self.train_every

    def gradients(self, xs: np.ndarray, ys: np.ndarray) -> list[np.ndarray]:
        """d(mean Huber loss, beta 1)/d(each parameter), float32: the backward pass of `predict_many`. Huber: a
        burst of anomalies in the batch must not wreck the model."""
        xs, ys = np.asarray(xs)[None], np.asarray(ys, np.float32)[None]
        stacked = _gradients([p[None] for p in self.params], xs, ys, self.lags)
        return [g[0] for g in stacked]


PREDICT_CHUNK = 256
"""Forecasters predicted in one stack (`predict_stacked`)."""


def predict_stacked(forecasters: Sequence[OnlineMLPForecaster], xs: np.ndarray) -> np.ndarray:
    """Each forecaster's `predict_many` on its own block, blocks of one length stacked: `xs` (forecasters, rows,
    inputs), returns (forecasters, rows). One NumPy call per step for the stack (the same BLAS call per matrix, so the
    same numbers to the bit) instead of a `predict_many` each: a bank's round of one reading a device made ~2,000
    calls of ~7 us. The forecasters share `lags` and `hidden` (a bank's do); `PREDICT_CHUNK` of them a stack."""
    out = np.empty(xs.shape[:2], np.float32)
    last = forecasters[0].lags - 1 if len(forecasters) else 0
    for at in range(0, len(forecasters), PREDICT_CHUNK):
        params = [fc.params for fc in forecasters[at:at + PREDICT_CHUNK]]
        w1, b1, w2, b2 = (_stack([p[i] for p in params]) for i in range(4))
        x = xs[at:at + PREDICT_CHUNK]
        h = np.tanh(x @ w1 + b1[:, None, :])
        out[at:at + len(params)] = (h @ w2 + b2[:, None, :])[:, :, 0] + x[:, :, last]
    return out


TRAIN_CHUNK = 32
"""Forecasters trained in one stack: a stack's temporaries stay in the CPU's cache (400 in one stack ran slower than
one at a time; 16-64 ran 2.3x faster, `train_many`)."""

_BETA1, _BETA2 = 0.9, 0.999


def train_many(forecasters: Sequence[OnlineMLPForecaster]) -> None:
    """``epochs`` Adam steps for each forecaster on the samples it queued, which it then forgets.

    Forecasters with the same shape and number of samples are trained as one stack (`TRAIN_CHUNK` at a time): one
    NumPy call per step for all of them instead of one each, which was most of a training's 0.2 ms. The numbers are
    those of training each alone, to the bit: NumPy's stacked `matmul` makes the same BLAS call per matrix, and every
    other step is elementwise or a reduction along the same axis (`tests/test_anomaly_models.py`). A device bank
    trains the forecasters due in a round together, so a fleet whose devices all reach ``train_every`` at once (a
    catch-up, or devices started together) does not stall its worker for a training each."""
    groups: dict[tuple, list[tuple[OnlineMLPForecaster, np.ndarray, np.ndarray]]] = {}
    for fc in forecasters:
        xs = np.ascontiguousarray(fc.buf_x[0]) if len(fc.buf_x) == 1 else np.concatenate(fc.buf_x)
        ys = np.ascontiguousarray(fc.buf_y[0]) if len(fc.buf_y) == 1 else np.concatenate(fc.buf_y)
        fc.buf_x, fc.buf_y, fc._queued = [], [], 0
        key = (len(ys), fc.lags, fc.hidden, fc.epochs, fc.lr)
        groups.setdefault(key, []).append((fc, xs, ys))
    for items in groups.values():
        for at in range(0, len(items), TRAIN_CHUNK):
            _train_stack(items[at:at + TRAIN_CHUNK])


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    """`np.stack` of arrays of one shape, made by `concatenate` (half of `np.stack`'s time for many small arrays: no
    view an array); one array is viewed, not copied."""
    if len(arrays) == 1:
        return arrays[0][None]
    return np.concatenate(arrays).reshape(len(arrays), *arrays[0].shape)


def _gradients(params: list[np.ndarray], xs: np.ndarray, ys: np.ndarray, lags: int) -> list[np.ndarray]:
    """`gradients` of a stack of forecasters: parameters, inputs and targets with one leading axis more."""
    w1, b1, w2, b2 = params
    h = np.tanh(xs @ w1 + b1[:, None, :])
    residual = (h @ w2 + b2[:, None, :])[:, :, 0] + xs[:, :, lags - 1] - ys
    g_pred = (np.clip(residual, -1.0, 1.0) / np.float32(ys.shape[1])).astype(np.float32)
    g_z = (g_pred[:, :, None] * w2[:, :, 0][:, None, :]) * (1.0 - h * h)
    return [xs.transpose(0, 2, 1) @ g_z, g_z.sum(axis=1), h.transpose(0, 2, 1) @ g_pred[:, :, None],
            g_pred.sum(axis=1, keepdims=True)]


def _train_stack(items: list[tuple[OnlineMLPForecaster, np.ndarray, np.ndarray]]) -> None:
    """Adam steps for forecasters of one shape and sample count, stacked; each keeps its own step count."""
    fcs = [fc for fc, _, _ in items]
    first = fcs[0]
    xs, ys = _stack([x for _, x, _ in items]), _stack([y for _, _, y in items])
    params = [_stack([fc.params[i] for fc in fcs]) for i in range(4)]
    m = [_stack([fc.m[i] for fc in fcs]) for i in range(4)]
    v = [_stack([fc.v[i] for fc in fcs]) for i in range(4)]
    steps = [fc.steps for fc in fcs]
    lr = first.lr
    for _ in range(first.epochs):
        grads = _gradients(params, xs, ys, first.lags)
        steps = [s + 1 for s in steps]
        # each forecaster's bias corrections, as its own float32 scalar would be applied
        c1 = np.array([1 - _BETA1 ** s for s in steps], np.float32)
        c2 = np.array([1 - _BETA2 ** s for s in steps], np.float32)
        for i, gn in enumerate(grads):
            shape = (len(fcs),) + (1,) * (gn.ndim - 1)
            m[i] = _BETA1 * m[i] + (1 - _BETA1) * gn
            v[i] = _BETA2 * v[i] + (1 - _BETA2) * gn * gn
            mh = m[i] / c1.reshape(shape)
            vh = v[i] / c2.reshape(shape)
            params[i] = (params[i] - lr * mh / (np.sqrt(vh) + 1e-8)).astype(np.float32)
    for j, fc in enumerate(fcs):  # copies: a view would keep the whole stack alive in each forecaster
        fc.params = [p[j].copy() for p in params]
        fc.m = [a[j].copy() for a in m]
        fc.v = [a[j].copy() for a in v]
        fc.steps = steps[j]
