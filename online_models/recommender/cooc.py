"""Co-occurrence rows, all of a model's in one slab: neighbours' dense-index rows (int32) and weights (float64).

A row was a dict of item id -> float: about 88 bytes an entry in a learner (the dict's slot, a float object, often
a string object of its own for the id, and a copy as arrays in the ranking cache), 30 MB for the demo shop's 340,000
entries and, at the caps (20,000 items a shard, rows of up to 150), over 250 MB a shard. Here an entry is 12 bytes
(plus its row's spare capacity), and the rows are already what `scoring.rank` sums over, so no ranking cache is kept.

`Rows` keeps every row of a model in two slab arrays, each row a segment of them (`meta`: offset, capacity, length,
pairs; `clocks`: clock, landmark, total), by the item's row in the model's `ItemIndex`. A click's pairs (forward
to each previous item's row, reverse into the clicked item's) go in with ONE compiled call (`learn_click`): a row
per object, updated by a compiled call each, cost a Python-to-Numba dispatch (~1-2 us with its arguments) per pair
and made learning slower than the dict it replaced. A row that fills moves to the slab's end with twice the room
(up to the most it holds before a prune); the segments it leaves are counted and compacted away in one pass when
they pass a quarter of the slab.

A live row names its neighbours by their row in the model's `ItemIndex`: the index renumbers rows when it evicts,
and `Rows.renumber` moves every row and every neighbour with it. Checkpoints name neighbours by item id
(`ItemState.cooc_ids`, written by `OnlineRecommender.checkpoint_item`), as they always did.

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
OFF, CAP, LEN, PAIRS = range(4)  # columns of `Rows.meta`
CLOCK, REF, TOTAL = range(3)  # columns of `Rows.clocks`


def limit(top_n: int) -> int:
    """Entries a row may hold before it is pruned back to `top_n`."""
    return top_n + (top_n >> 1)


def capacity(n: int, top_n: int) -> int:
    """The room of a row of `n` entries, as if it had grown pair by pair (8, doubling, up to `limit + 1`)."""
    return 0 if not n else min(8 << max(0, (n - 1) // 8).bit_length(), limit(top_n) + 1)


@numba.njit(cache=True, nogil=True, inline="always")
def find(nbr: np.ndarray, off: int, n: int, row: int) -> int:
    """Position of neighbour `row` in the segment `nbr[off:off + n]`, -1 if absent."""
    for i in range(n):
        if nbr[off + i] == row:
            return i
    return -1


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
    at = find(rows, 0, n, other)
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


@numba.njit(cache=True, nogil=True, inline="always")
def _add_at(nbr: np.ndarray, val: np.ndarray, meta: np.ndarray, clocks: np.ndarray, pos: np.ndarray, r: int, other: int,
            amount: float, base: float, rate_pairs: float, top_n: int, max_exponent: float) -> None:
    """One pair into row `r` of the slab, moving the row to the slab's end (twice the room) when it is full."""
    off, cap, n = meta[r, OFF], meta[r, CAP], meta[r, LEN]
    if n >= cap:
        new = min(max(8, 2 * cap), top_n + (top_n >> 1) + 1)
        at = pos[0]
        for i in range(n):
            nbr[at + i] = nbr[off + i]
            val[at + i] = val[off + i]
        pos[0] = at + new
        pos[1] += cap
        off = meta[r, OFF] = at
        cap = meta[r, CAP] = new
    n, npairs, clock, ref, total = _add(nbr[off:off + cap], val[off:off + cap], n, other, amount, base, rate_pairs,
                                        meta[r, PAIRS], clocks[r, CLOCK], clocks[r, REF], clocks[r, TOTAL], top_n,
                                        max_exponent)
    meta[r, LEN] = n
    meta[r, PAIRS] = npairs
    clocks[r, CLOCK] = clock
    clocks[r, REF] = ref
    clocks[r, TOTAL] = total


@numba.njit(cache=True, nogil=True)
def learn_click(nbr: np.ndarray, val: np.ndarray, meta: np.ndarray, clocks: np.ndarray, pos: np.ndarray, this: int,
                prevs: np.ndarray, amounts: np.ndarray, k: int, back: float, base: float, rate_pairs: float, top_n: int,
                max_exponent: float) -> None:
    """A click's pairs: `prevs[i] -> this` with `amounts[i]` (i < k) into each previous item's row, then the reverse
    pairs `this -> prevs[i]` with `back * amounts[i]` into the clicked item's row, in order. The slab must have room
    for every row involved to move once (`Rows.learn`)."""
    for p in range(k):
        _add_at(nbr, val, meta, clocks, pos, prevs[p], this, amounts[p], base, rate_pairs, top_n, max_exponent)
    for p in range(k):
        _add_at(nbr, val, meta, clocks, pos, this, prevs[p], back * amounts[p], base, rate_pairs, top_n, max_exponent)


@numba.njit(cache=True, nogil=True)
def _compact(nbr: np.ndarray, val: np.ndarray, meta: np.ndarray, count: int, to_nbr: np.ndarray,
             to_val: np.ndarray) -> int:
    """Copy the first `count` rows' segments (their used entries, their capacity kept) back to back into `to_*`;
    returns the slab's new end."""
    at = 0
    for r in range(count):
        off, cap, n = meta[r, OFF], meta[r, CAP], meta[r, LEN]
        for i in range(n):
            to_nbr[at + i] = nbr[off + i]
            to_val[at + i] = val[off + i]
        meta[r, OFF] = at
        at += cap
    return at


@numba.njit(cache=True, nogil=True)
def _renumber(nbr: np.ndarray, val: np.ndarray, meta: np.ndarray, clocks: np.ndarray, count: int, new_row: np.ndarray,
              to_meta: np.ndarray, to_clocks: np.ndarray, changed: np.ndarray) -> int:
    """Rows `r < count` move to `new_row[r]` (-1: dropped) in `to_*`, and every kept row's neighbours are renumbered
    the same way, the dropped ones left out in place (the others keep their order); `changed[new]` marks a row that
    lost neighbours. Returns the capacity of the dropped rows' segments."""
    freed = 0
    for r in range(count):
        nr = new_row[r]
        if nr < 0:
            freed += meta[r, CAP]
            continue
        for c in range(4):
            to_meta[nr, c] = meta[r, c]
        for c in range(3):
            to_clocks[nr, c] = clocks[r, c]
        off, n = meta[r, OFF], meta[r, LEN]
        m = 0
        for i in range(n):
            j = new_row[nbr[off + i]]
            if j >= 0:
                nbr[off + m] = j
                val[off + m] = val[off + i]
                m += 1
        to_meta[nr, LEN] = m
        changed[nr] = m != n
    return freed


class Rows:
    """Every co-occurrence row of one model, by the item's row in the model's `ItemIndex` (see the module docstring).
    Plain NumPy arrays: it pickles with the model."""

    def __init__(self, top_n: int, capacity: int = 1024, window: int = 64) -> None:
        self.top_n = top_n
        self.meta = np.zeros((capacity, 4), dtype=np.int64)  # offset, capacity, length, pairs
        self.clocks = np.zeros((capacity, 3), dtype=np.float64)  # decay clock, landmark, total (see ItemState)
        self.nbr = np.zeros(8192, dtype=np.int32)
        self.val = np.zeros(8192, dtype=np.float64)
        self.pos = np.zeros(2, dtype=np.int64)  # the slab's used end; entries in segments rows moved out of
        self.count = 0  # rows in use (the index's length)
        self.size = self.nbr.shape[0]
        self.prevs = np.zeros(max(1, window), dtype=np.int32)  # a click's previous items' rows (`learn`, written by
        self.amounts = np.zeros(max(1, window), dtype=np.float64)  # the model; at most `window`) and pairs' amounts

    def ensure(self, count: int) -> None:
        """Room for rows `0 .. count - 1` (new ones empty)."""
        if count > self.meta.shape[0]:
            new = max(count, 2 * self.meta.shape[0])
            self.meta = np.concatenate([self.meta, np.zeros((new - self.meta.shape[0], 4), dtype=np.int64)])
            self.clocks = np.concatenate([self.clocks, np.zeros((new - self.clocks.shape[0], 3))])
        self.count = max(self.count, count)

    def _room(self, rows: int, need: int = 0) -> None:
        """Slab room for `rows` rows to move to its end once each (and `need` entries more): compacted if a quarter
        of it is left-behind segments, else grown."""
        need += rows * (limit(self.top_n) + 1)
        end, dead = int(self.pos[0]), int(self.pos[1])
        size = self.nbr.shape[0]
        if end + need <= size:
            return
        live = end - dead  # np.empty below: the untouched tail costs no RSS
        if dead * 4 > end:
            size = max(size, 2 * (live + need))
            nbr, val = np.empty(size, dtype=np.int32), np.empty(size)  # read only below `end`
            self.pos[0] = _compact(self.nbr, self.val, self.meta, self.count, nbr, val)
            self.pos[1] = 0
        else:
            size = max(2 * size, end + need)
            nbr, val = np.empty(size, dtype=np.int32), np.empty(size)  # read only below `end`
            nbr[:end], val[:end] = self.nbr[:end], self.val[:end]
        self.nbr, self.val, self.size = nbr, val, size

    def learn(self, this: int, k: int, back: float, base: float, rate_pairs: float) -> None:
        """A click's pairs in one compiled call (`learn_click`): `prevs[:k]` and `amounts[:k]`, which the caller
        wrote (no arrays made per click: that cost as much as the call)."""
        if self.pos[0] + (k + 1) * (self.top_n + (self.top_n >> 1) + 1) > self.size:
            self._room(k + 1)
        learn_click(self.nbr, self.val, self.meta, self.clocks, self.pos, this, self.prevs, self.amounts, k, back, base,
                    rate_pairs, self.top_n, MAX_EXPONENT)

    def put(self, r: int, others: np.ndarray, weights: np.ndarray, pairs: int, clock: float, ref: float,
            total: float) -> None:
        """Set row `r` as a checkpoint had it (a restore): these neighbours and weights, clock and total."""
        n = len(others)
        most = limit(self.top_n)
        if n > most:  # a row wider than this model keeps (another top-N): its top entries, as its next pair would
            order = np.argsort(-weights, kind="mergesort")[:self.top_n]
            others, weights, n = others[order], weights[order], self.top_n
        cap = capacity(n, self.top_n)
        self._room(0, cap)
        at = int(self.pos[0])
        self.nbr[at:at + n], self.val[at:at + n] = others, weights
        self.pos[0] = at + cap
        self.pos[1] += self.meta[r, CAP]
        self.meta[r] = (at, cap, n, pairs)
        self.clocks[r] = (clock, ref, total)

    def reserve(self, entries: int) -> None:
        """Room for `entries` more at the slab's end at once (rows a restore puts in): growing to it by doubling
        left the allocator holding about twice the slab."""
        self._room(0, entries)

    def row(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        """Row `r` as views (neighbours, weights) of its used entries: valid until the next change."""
        off, _cap, n, _pairs = self.meta[r].tolist()
        return self.nbr[off:off + n], self.val[off:off + n]

    def length(self, r: int) -> int:
        return int(self.meta[r, LEN])

    def stats(self, r: int) -> tuple[int, float, float, float]:
        """Row `r`'s (pairs, clock, landmark, total)."""
        clock, ref, total = self.clocks[r].tolist()
        return int(self.meta[r, PAIRS]), clock, ref, total

    def norm(self, r: int, prior: float) -> float:
        """The row's normaliser: its total plus `prior` pseudo-counts on its scale (as of its last pair)."""
        clock, ref, total = self.clocks[r].tolist()
        return total + prior * math.exp(clock - ref)

    def weight(self, r: int, other: int) -> float:
        """Row `r`'s weight of neighbour `other` (0 if absent)."""
        off, _cap, n, _pairs = self.meta[r].tolist()
        at = find(self.nbr, off, n, other)
        return float(self.val[off + at]) if at >= 0 else 0.0

    def entries(self) -> int:
        return int(self.meta[:self.count, LEN].sum())

    def nbytes(self) -> int:
        """Bytes of the slab in use, left-behind segments included, and of the per-row arrays."""
        end = int(self.pos[0])
        return end * 12 + self.meta.nbytes + self.clocks.nbytes

    def renumber(self, new_row: np.ndarray, count: int) -> np.ndarray:
        """Follow an index that renumbered its rows (`new_row[old]`, -1: gone) to `count` rows; returns the new rows
        that lost neighbours (bool array)."""
        old = min(self.count, len(new_row))
        cap = max(count, 1024)
        meta, clocks = np.zeros((cap, 4), dtype=np.int64), np.zeros((cap, 3))
        changed = np.zeros(cap, dtype=np.bool_)
        if not old:  # a model's first index (nothing to move)
            self.meta, self.clocks, self.count = meta, clocks, count
            return changed[:count]
        self.pos[1] += _renumber(self.nbr, self.val, self.meta, self.clocks, old, new_row.astype(np.int32), meta, clocks,
                                 changed)
        self.pos[1] += int(self.meta[old:self.count, CAP].sum())
        self.meta, self.clocks, self.count = meta, clocks, count
        return changed[:count]


def warm_up() -> None:
    """Compile the kernels (or load them from Numba's cache) with the types the model passes."""
    rows = Rows(4, 4)
    rows.ensure(3)
    rows.prevs[:2] = (0, 1)
    rows.amounts[:2] = (1.0, 0.5)
    rows.learn(2, 2, 0.5, 0.0, 0.0)
    rows.weight(0, 2)
    rows.renumber(np.array([0, -1, 1], dtype=np.int32), 2)
    rows._room(10_000)  # noqa: SLF001 - compiles the compaction
    rows.pos[1] = rows.pos[0]
    rows._room(20_000)  # noqa: SLF001
