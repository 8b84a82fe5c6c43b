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
        ys = np.asarray(ys, dtype=np.float32)
        self.buf_x.append(np.asarray(xs, dtype=np.float32))
        self.buf_y.append(ys)
        self._queued += len(ys)
        if self._queued >= self.train_every:
            self._train(np.concatenate(self.buf_x), np.concatenate(self.buf_y))
            self.buf_x, self.buf_y, self._queued = [], [], 0

    def gradients(self, xs: np.ndarray, ys: np.ndarray) -> list[np.ndarray]:
        """d(mean Huber loss, beta 1)/d(each parameter), float32: the backward pass of `predict_many`. Huber: a
        burst of anomalies in the batch must not wreck the model."""
        w1, b1, w2, b2 = self.params
        h = np.tanh(xs @ w1 + b1)
        residual = (h @ w2 + b2)[:, 0] + xs[:, self.lags - 1] - ys
        g_pred = (np.clip(residual, -1.0, 1.0) / np.float32(len(ys))).astype(np.float32)
        g_z = (g_pred[:, None] * w2[:, 0][None, :]) * (1.0 - h * h)
        return [xs.T @ g_z, g_z.sum(axis=0), h.T @ g_pred[:, None], g_pred.sum(keepdims=True)]

    def _train(self, xs: np.ndarray, ys: np.ndarray) -> None:
        """``epochs`` Adam steps on the queued samples."""
        b1, b2_ = 0.9, 0.999
        for _ in range(self.epochs):
            grads = self.gradients(xs, ys)
            self.steps += 1
            for i, gn in enumerate(grads):
                self.m[i] = b1 * self.m[i] + (1 - b1) * gn
                self.v[i] = b2_ * self.v[i] + (1 - b2_) * gn * gn
                mh = self.m[i] / (1 - b1 ** self.steps)
                vh = self.v[i] / (1 - b2_ ** self.steps)
                self.params[i] = (self.params[i] - self.lr * mh / (np.sqrt(vh) + 1e-8)).astype(np.float32)
