"""The BPR step in one compiled loop.

With one negative per click, `learn_one`'s latent update was a dozen NumPy calls on 32-element
vectors: about 1 us each, for arithmetic that takes nanoseconds (a fifth of `learn_one`). Numba
does the same step in one pass. Vectors stay float32 (the dense index's type); the score and
the scalars are float64, so the step rounds a little differently from the NumPy spelling.
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def bpr_step(p: np.ndarray, qi: np.ndarray, qj: np.ndarray, bias_i: float, bias_j: float, scale: float, keep: float,
             q: np.ndarray, bias: np.ndarray, i: int, j: int) -> tuple[float, float]:
    """One BPR update of user `p`, clicked item `qi` and sampled negative `qj`, in place; returns the items' new
    biases. Rows `i` and `j` of the dense index (`q`, `bias`) get the new vectors and biases in the same call:
    four NumPy row writes cost more than the step.

    Each vector is shrunk by `keep` (L2) and moved along the gradient of
    log sigmoid(p . (qi - qj) + bias_i - bias_j), with step `scale` times the sigmoid's complement `g`;
    the biases move by `g` the same way (`bias_i * keep + g`, `bias_j * keep - g`)."""
    x = bias_i - bias_j
    for d in range(p.shape[0]):
        x += p[d] * (qi[d] - qj[d])
    g = scale / (1.0 + math.exp(x)) if x > -30.0 else scale
    for d in range(p.shape[0]):
        pd = p[d]
        diff = qi[d] - qj[d]
        p[d] = pd * keep + g * diff
        qi[d] = qi[d] * keep + g * pd
        qj[d] = qj[d] * keep - g * pd
        q[i, d] = qi[d]
        q[j, d] = qj[d]
    new_i = bias_i * keep + g
    new_j = bias_j * keep - g
    bias[i] = new_i
    bias[j] = new_j
    return new_i, new_j


def warm_up() -> None:
    """Compile `bpr_step` (or load it from Numba's cache) with the types `learn_one` passes."""
    v = np.zeros(2, dtype=np.float32)
    bpr_step(v, v.copy(), v.copy(), 0.0, 0.0, 0.1, 1.0, np.zeros((2, 2), dtype=np.float32), np.zeros(2, dtype=np.float32), 0, 1)
