"""Bayesian online probit regression: the learner on top of every encoder.

Why this learner: with a few hundred labels and ~400 dense features, plain SGD
is slow to converge and sensitive to its learning rate. Assumed-density
filtering keeps a Gaussian posterior N(mean, cov) over the weights and updates
it in closed form per example (no learning rate), so the first labels already
move the model, and the prior mean lets the lexicon score decide at cold start.
The full covariance makes each update O(d^2), fine for d ~ 400.
"""

from __future__ import annotations

import math

import numpy as np

_SQRT2 = math.sqrt(2.0)
_SQRT2PI = math.sqrt(2.0 * math.pi)


def _normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / _SQRT2)


def _pdf_over_cdf(z: float) -> float:
    """phi(z) / Phi(z), stable in the far left tail (where it tends to -z)."""
    if z < -30.0:
        return -z
    return math.exp(-0.5 * z * z) / _SQRT2PI / _normal_cdf(z)


class ProbitHead:
    """P(positive | x) = Phi(w.x / sqrt(noise)), weights w ~ N(mean, cov)."""

    def __init__(self, prior_mean: np.ndarray, prior_variance: np.ndarray, noise: float = 1.0) -> None:
        self.mean = np.asarray(prior_mean, dtype=np.float64).copy()
        self.cov = np.diag(np.asarray(prior_variance, dtype=np.float64))
        self.noise = noise
        self.n_seen = 0

    def _margin(self, x: np.ndarray) -> tuple[float, np.ndarray, float]:
        cov_x = self.cov @ x
        return float(x @ self.mean), cov_x, float(x @ cov_x)

    def predict_proba(self, x: np.ndarray) -> float:
        """Predictive probability, weight uncertainty included (so it starts humble)."""
        m, _, s2 = self._margin(x)
        return _normal_cdf(m / math.sqrt(self.noise + s2))

    def learn(self, x: np.ndarray, positive: bool) -> None:
        m, cov_x, s2 = self._margin(x)
        t = 1.0 if positive else -1.0
        d = math.sqrt(self.noise + s2)
        z = t * m / d
        v = _pdf_over_cdf(z)
        self.mean += (t * v / d) * cov_x
        self.cov -= (v * (v + z) / (self.noise + s2)) * np.outer(cov_x, cov_x)
        self.n_seen += 1
