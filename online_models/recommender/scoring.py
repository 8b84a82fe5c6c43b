"""The ranking kernel: one compiled pass over a shard's items.

`recommend` scored a shard's ~2,000 items with about fifty NumPy calls of a few microseconds each:
at that size the calls, not the arithmetic, were the cost (190 us a request alone, about 280 us
inside a busy worker: half of the CPU a request cost the worker). Numba compiles the same arithmetic
into a few loops (`rank`); what is user-independent stays cached in `model._Shared`. The latent
signal's matrix-vector product and exponentials stay in NumPy (BLAS and SIMD exp are faster than
Numba's scalar loops there) and come in as one vector.

Signal order (and the index of each in `available` and in the returned reasons) is `SIGNALS`.
"""

from __future__ import annotations

import numba
import numpy as np

from online_models.recommender.config import CATEGORY, CO_OCCURRENCE, LATENT, POPULAR, SESSION, TRENDING

SIGNALS = (POPULAR, TRENDING, SESSION, CO_OCCURRENCE, LATENT, CATEGORY)
HAS = {name: 1 << i for i, name in enumerate(SIGNALS)}  # bits of `rank`'s `available`
_POP, _TREND, _SESS, _COOC, _LAT, _CAT = range(6)

# No fastmath: a reassociated (vectorised) sum rounds differently when the shard's item rows come in
# another order, as after a restore, so a restored shard's scores differed in the last bit.


@numba.njit(cache=True, nogil=True)
def rank(
    k: int,
    available: int,  # the signals the user has, as bits (HAS)
    popular_weight: float,  # blend weights of popular and trending (the other signals come weighted)
    trending_weight: float,
    base: np.ndarray,  # float64[n]: blend-weighted popular + trending, -inf on inactive items
    popular: np.ndarray,  # float64[n] (empty when not available)
    trending: np.ndarray,
    entry_rows: np.ndarray,  # int32[m]: co-occurrence rows of the user's recent items, concatenated: item rows
    entry_probs: np.ndarray,  # float64[m]: the rows' weights (times the source's `srcs`: P(j | source) x its weight)
    lens: np.ndarray,  # int64[s]: entries of each source item
    srcs: np.ndarray,  # float64[s]: weight of each source item over its row's normaliser, > 0 in the live session (session), < 0 before
    session_scale: float,  # blend weight / sum of the sources' weights, of session and of co_occurrence
    cooc_scale: float,
    latent_exp: np.ndarray,  # float64[n]: exp(BPR logit / temperature - max), 0 on inactive items (empty if not available)
    latent_weight: float,
    cats: np.ndarray,  # int32[n], -1: none
    share: np.ndarray,  # float64[n]: an item's share of its category's popularity
    cat_weights: np.ndarray,  # float64[categories + 1]: blend-weighted preference, last 0 (no category)
    drop: np.ndarray,  # int64[]: rows never recommended (purchased, excluded)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k rows by blended score, best first (lower row first on ties), with each one's score and the
    index of the signal that contributed most (first on ties); rows scoring -inf are left out."""
    n = base.shape[0]
    score = base.copy()
    sess = np.zeros(n)
    cooc = np.zeros(n)
    e = 0
    for source in range(lens.shape[0]):
        weight = srcs[source]
        dense = sess if weight > 0 else cooc
        weight = abs(weight)
        for _ in range(lens[source]):
            dense[entry_rows[e]] += entry_probs[e] * weight
            e += 1
    if available & (1 << _SESS):
        for i in range(n):
            sess[i] *= session_scale
            score[i] += sess[i]
    if available & (1 << _COOC):
        for i in range(n):
            cooc[i] *= cooc_scale
            score[i] += cooc[i]
    latent = np.zeros(n)
    if available & (1 << _LAT):
        total = 0.0
        for i in range(n):
            total += latent_exp[i]
        factor = latent_weight / total if total > 0 else 0.0
        for i in range(n):
            latent[i] = latent_exp[i] * factor
            score[i] += latent[i]
    if available & (1 << _CAT):
        for i in range(n):
            score[i] += cat_weights[cats[i]] * share[i]
    for r in drop:
        score[r] = -np.inf

    k = min(k, n)
    rows = np.empty(k, dtype=np.int64)
    best = np.full(k, -np.inf)
    m = 0  # rows kept so far, sorted by score (descending)
    for i in range(n):
        x = score[i]
        if x == -np.inf or (m == k and x <= best[k - 1]):
            continue
        j = m if m < k else k - 1
        while j > 0 and best[j - 1] < x:
            best[j] = best[j - 1]
            rows[j] = rows[j - 1]
            j -= 1
        best[j] = x
        rows[j] = i
        if m < k:
            m += 1

    reasons = np.empty(m, dtype=np.int8)
    contrib = np.empty(6)
    for t in range(m):
        i = rows[t]
        contrib[_POP] = popular_weight * popular[i] if available & (1 << _POP) else 0.0
        contrib[_TREND] = trending_weight * trending[i] if available & (1 << _TREND) else 0.0
        contrib[_SESS] = sess[i]
        contrib[_COOC] = cooc[i]
        contrib[_LAT] = latent[i]
        contrib[_CAT] = cat_weights[cats[i]] * share[i] if available & (1 << _CAT) else 0.0
        why = -1
        for c in range(6):
            if available & (1 << c) and (why < 0 or contrib[c] > contrib[why]):
                why = c
        reasons[t] = why
    return rows[:m], best[:m], reasons


def warm_up() -> None:
    """Compile `rank` (or load it from Numba's cache) now, with the argument types `recommend` passes, rather
    than in the first request (a worker calls this before it serves)."""
    f, i = np.zeros(2), np.zeros(1, dtype=np.int64)
    rank(1, sum(HAS.values()), 0.5, 0.5, f, f, f, np.zeros(1, dtype=np.int32), np.ones(1), i + 1, np.ones(1), 1.0, 1.0, f, 1.0,
         np.zeros(2, dtype=np.int32), f, np.zeros(1), i)
