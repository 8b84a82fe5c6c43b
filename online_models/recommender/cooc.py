"""Co-occurrence rows as two small arrays: neighbours' dense-index rows (int32) and forward-decayed weights (float64).

A row was a dict of item id -> float: about 88 bytes an entry in a learner (the dict's slot, a float object, often
a string object of its own for the id, and a copy as arrays in the ranking cache), 30 MB for the demo shop's 340,000
entries and, at the caps (20,000 items a shard, rows of up to 150), over 250 MB a shard. As arrays an entry is 12
bytes, and the rows are already what `scoring.rank` sums over, so no ranking cache is kept.

A live row names its neighbours by their row in the model's `ItemIndex`: the index renumbers rows when it evicts,
and the model moves every row's numbers with it (`remap`). Checkpoints name neighbours by item id (`ItemState.cooc`,
written by `OnlineRecommender.checkpoint_item`), as they always did, so checkpoints of either layout restore.

The arithmetic is `state.forward_add`'s, per pair: each pair moves the row's decay clock; when the exponent would
pass `MAX_EXPONENT` the row is rescaled to a new landmark; past 1.5x `top_n` entries the row is pruned to its
`top_n` largest, in descending order, earlier entries first on ties (what `heapq.nlargest` kept).
"""

from __future__ import annotations

import math

import numba
import numpy as np

MAX_EXPONENT = 30.0  # rescale a row before exp() grows past ~1e13
NO_ROWS = np.zeros(0, dtype=np.int32)
NO_VALS = np.zeros(0, dtype=np.float64)


def limit(top_n: int) -> int:
    """Entries a row may hold before it is pruned back to `top_n`."""
    return top_n + (top_n >> 1)


def room(rows: np.ndarray, vals: np.ndarray, n: int, extra: int, top_n: int) -> tuple[np.ndarray, np.ndarray]:
    """The row's arrays with space for `extra` more entries (capacity doubles from 8 up to `limit + 1`,
    the most a row holds before its prune)."""
    cap = rows.shape[0]
    need = min(n + extra, limit(top_n) + 1)
    if cap >= need:
        return rows, vals
    new = min(max(8, 2 * cap, need), limit(top_n) + 1)
    r = np.empty(new, dtype=np.int32)
    v = np.empty(new, dtype=np.float64)
    r[:n] = rows[:n]
    v[:n] = vals[:n]
    return r, v


@numba.njit(cache=True, nogil=True, inline="always")
def _add(rows: np.ndarray, vals: np.ndarray, n: int, other: int, amount: float, base: float, rate_pairs: float,
         npairs: int, clock: float, ref: float, total: float, top_n: int,
         max_exponent: float) -> tuple[int, int, float, float, float]:
    npairs += 1
    c = base + rate_pairs * npairs
    if c > clock:  # a late event is as old as the row, not older
        clock = c
    exponent = clock - ref
    if exponent > max_exponent or n == 0:
        if n:
            shrink = math.exp(-exponent)
            for i in range(n):
                vals[i] *= shrink
            total *= shrink
        ref = clock
        exponent = 0.0
    scaled = amount * math.exp(exponent)
    at = -1
    for i in range(n):
        if rows[i] == other:
            at = i
            break
    if at >= 0:
        vals[at] += scaled
    else:
        rows[n] = other
        vals[n] = scaled
        n += 1
    total += scaled
    if n > top_n + (top_n >> 1):
        order = np.argsort(-vals[:n], kind="mergesort")[:top_n]
        kept_rows = rows[order]
        kept_vals = vals[order]
        rows[:top_n] = kept_rows
        vals[:top_n] = kept_vals
        n = top_n
    return n, npairs, clock, ref, total


@numba.njit(cache=True, nogil=True)
def add_pairs(rows: np.ndarray, vals: np.ndarray, n: int, others: np.ndarray, amounts: np.ndarray, base: float,
              rate_pairs: float, npairs: int, clock: float, ref: float, total: float,
              top_n: int, max_exponent: float) -> tuple[int, int, float, float, float]:
    """Add `(others[i], amounts[i])` in order, in place; returns the row's new (length, pairs, clock, landmark,
    total). `base` is rate_s * t; `rows`/`vals` must have room for `min(n + len(others), limit + 1)` entries."""
    for p in range(others.shape[0]):
        n, npairs, clock, ref, total = _add(rows, vals, n, others[p], amounts[p], base, rate_pairs, npairs, clock, ref,
                                            total, top_n, max_exponent)
    return n, npairs, clock, ref, total


@numba.njit(cache=True, nogil=True)
def add_pair(rows: np.ndarray, vals: np.ndarray, n: int, other: int, amount: float, base: float, rate_pairs: float,
             npairs: int, clock: float, ref: float, total: float, top_n: int,
             max_exponent: float) -> tuple[int, int, float, float, float]:
    """`add_pairs` of one pair, without building arrays for it (a click's forward pairs go to one row each)."""
    return _add(rows, vals, n, other, amount, base, rate_pairs, npairs, clock, ref, total, top_n, max_exponent)


@numba.njit(cache=True, nogil=True)
def remap(rows: np.ndarray, vals: np.ndarray, n: int, new_row: np.ndarray) -> int:
    """Renumber the row's neighbours by `new_row` (old index row -> new, -1: gone), dropping the gone ones in place
    and keeping the others' order; returns the new length."""
    m = 0
    for i in range(n):
        r = new_row[rows[i]]
        if r >= 0:
            rows[m] = r
            vals[m] = vals[i]
            m += 1
    return m


def find(rows: np.ndarray, n: int, row: int) -> int:
    """Position of neighbour `row` in the row, -1 if absent."""
    hit = np.flatnonzero(rows[:n] == row)
    return int(hit[0]) if len(hit) else -1


def warm_up() -> None:
    """Compile the kernels (or load them from Numba's cache) with the types the model passes."""
    r, v = np.zeros(4, dtype=np.int32), np.zeros(4)
    add_pairs(r, v, 0, np.zeros(1, dtype=np.int32), np.ones(1), 0.0, 0.0, 0, 0.0, 0.0, 0.0, 2, MAX_EXPONENT)
    add_pair(r, v, 1, 1, 1.0, 0.0, 0.0, 1, 0.0, 0.0, 0.0, 2, MAX_EXPONENT)
    remap(r, v, 1, np.zeros(4, dtype=np.int32))
