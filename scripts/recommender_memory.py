"""Memory of a recommender shard at its caps: bytes per user and per item, and the RSS of a process holding one.

`python scripts/recommender_memory.py [max_users max_items]`: builds a model whose every user and item is as
large as the model lets it grow (full co-occurrence rows of 1.5x `cooc_top_n` entries, full recent history,
`purchased` entries and categories as given below), and reports:
- Python heap (tracemalloc) per user and per item once the model has taken the items in (rows by item id, as a
  checkpoint brings them, become arrays), with the dense index's and the co-occurrence arrays' share;
- the encoded checkpoint size (Wharf's state format) per user and per item;
- the process's RSS before and after (`--rss`: without tracemalloc, whose own bookkeeping would count).
The worst case of `purchased` (500 per user) is reported apart: a shop's users rarely buy that much.
"""

from __future__ import annotations

import sys
import tracemalloc

import numpy as np

from online_models.recommender import ItemState, OnlineRecommender, RecommenderConfig, UserState
from online_models.recommender.model import _MAX_PURCHASED
from online_models.recommender.state import STATE_TYPES
from schemas.state import StateCodec


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def make_items(cfg: RecommenderConfig, n: int) -> dict[str, ItemState]:
    rng = np.random.default_rng(0)
    row_len = cfg.cooc_top_n + (cfg.cooc_top_n >> 1)
    items = {}
    for i in range(n):
        iid = f"item-{i:08d}"
        st = ItemState(iid, category=f"cat-{i % 200}", price=9.99, cooc_total=1.0, cooc_pairs=500, last_ts=1e9 + i)
        st.cooc_ids = [f"item-{int(j):08d}" for j in rng.choice(n, min(row_len, n), replace=False)]  # as a restore brings it
        st.cooc_weights = rng.random(len(st.cooc_ids))
        st.factors = rng.standard_normal(cfg.dim).astype(np.float32)
        st.popular, st.trending, st.events = 1.0, 1.0, 10
        items[iid] = st
    return items


def make_users(cfg: RecommenderConfig, n: int, n_items: int, purchased: int, categories: int) -> dict[str, UserState]:
    rng = np.random.default_rng(1)
    users = {}
    for u in range(n):
        uid = f"user-{u:08d}"
        st = UserState(uid, session_id=f"sess-{u:08d}", last_ts=1e9 + u, events=50, categories_ref=1e9)
        st.recent = [(f"item-{int(j):08d}", 1.0, 1e9 + k, st.session_id) for k, j in enumerate(rng.integers(0, n_items, cfg.recent_items))]
        st.purchased = {f"item-{int(j):08d}": 1e9 for j in rng.integers(0, n_items, purchased)}
        st.categories = {f"cat-{c}": 1.0 for c in range(categories)}
        st.factors = rng.standard_normal(cfg.dim).astype(np.float32)
        users[uid] = st
    return users


def measure(max_users: int, max_items: int, purchased: int = 20, categories: int = 20, trace: bool = True) -> dict[str, float]:
    """`trace`: tracemalloc's count of the heap per user/item (off: the RSS alone, without tracemalloc's own cost)."""
    cfg = RecommenderConfig(max_users=max_users, max_items=max_items)
    codec = StateCodec(STATE_TYPES)
    rss0 = rss_mb()
    if trace:
        tracemalloc.start()
    items = make_items(cfg, max_items)
    model = OnlineRecommender(cfg, items=items)  # takes the rows in as arrays (and drops their id lists)
    item_heap = tracemalloc.get_traced_memory()[0]
    users = make_users(cfg, max_users, max_items, purchased, categories)
    model.users.update(users)
    model._share_strings()  # noqa: SLF001 - what a model given restored users does
    user_heap = tracemalloc.get_traced_memory()[0] - item_heap
    tracemalloc.stop()
    idx = model.index
    dense = sum(a.nbytes for a in (idx.q, idx.bias, idx.popular, idx.trending, idx.category, idx.active, idx.names))
    rows = model.rows.nbytes()
    sample_u, sample_i = list(users)[:200], list(items)[:200]
    enc_u = len(codec.dumps({k: users[k] for k in sample_u})) / len(sample_u)
    enc_i = len(codec.dumps({k: model.checkpoint_item(items[k]) for k in sample_i})) / len(sample_i)
    return {"users": max_users, "items": max_items, "purchased": purchased, "user_heap_b": user_heap / max_users,
            "item_heap_b": item_heap / max_items, "item_dense_b": dense / max_items, "item_rows_b": rows / max_items,
            "user_encoded_b": enc_u, "item_encoded_b": enc_i, "rss_before_mb": rss0, "rss_after_mb": rss_mb()}


if __name__ == "__main__":
    u, i = (int(a) for a in sys.argv[1:3]) if len(sys.argv) > 2 else (100_000, 50_000)
    worst = "--worst" in sys.argv
    r = measure(u, i, purchased=_MAX_PURCHASED if worst else 20, trace="--rss" not in sys.argv)
    print(f"{r['users']:,} users, {r['items']:,} items ({r['purchased']} purchases per user)")
    print(f"per user: {r['user_heap_b']:,.0f} B heap, {r['user_encoded_b']:,.0f} B encoded")
    print(f"per item: {r['item_heap_b']:,.0f} B heap (of which {r['item_dense_b']:,.0f} B dense index, "
          f"{r['item_rows_b']:,.0f} B co-occurrence arrays), {r['item_encoded_b']:,.0f} B encoded")
    print(f"RSS: {r['rss_before_mb']:,.0f} MB before, {r['rss_after_mb']:,.0f} MB holding the model")
