"""Many devices' anomaly models held column-wise: one `score_learn_batch` call per batch for every device in it.

Same detector as `DeviceAnomalyModel` (`model.py`), same blocks (each device's rows in blocks of `batch_max`, each
block scored against the state before it, then learned), so a device's scores are those of its own
`DeviceAnomalyModel.score_learn_many` on its rows, to float rounding (`tests/test_device_bank.py` checks it on NAB).
Why: per device and block that model pays a dozen NumPy calls, seven compiled ones, River's HST and its forecasters
(~200 NumPy calls before issue 19); here every component's state is a row of plain arrays
(`ms`: one row per metric slot; `ds`: one row per device slot; HST masses in `hl`/`hr`) and the compiled kernels
(`kernels.py`) run one block of every device of a batch in one call.

Columnar: level, shift, drift, seasonal, weekly, stuck, calibrators, HalfSpaceTrees (masses and walks; a tree's
shape is built once by River, as in the model), fusion, alert suppression and bursts, the reading interval.
Not columnar: the forecaster (`OnlineMLPForecaster`, one per metric slot: its prediction is one small matrix
product per device block, its training a few NumPy Adam steps every `train_every` samples).

A device's state moves out as its rows (`row`: what checkpoints write, `DeviceRow`) or as a `DeviceAnomalyModel`
(`extract`: one model, e.g. to score one device alone), and in as either (`insert`: checkpoints written before rows
hold models and still restore).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import numpy as np

from online_models.anomaly import kernels as K
from online_models.anomaly.forecaster import OnlineMLPForecaster, predict_stacked, train_many
from online_models.anomaly.model import _CAL, AnomalyConfig, BatchResult, DeviceAnomalyModel, make_config

_KINDS = ("l", "s", "f")  # HST features per metric: level, seasonal, forecast z (squashed)


@dataclass(frozen=True)
class Layout:
    """Column offsets of the variable-width parts of a metric slot's row (`ms`)."""

    rec: int
    lag: int
    sm: int
    sc: int
    wm: int
    wc: int
    ct: int
    cn: int
    cc: int
    end: int

    @classmethod
    def of(cls, cfg: AnomalyConfig) -> Layout:
        wb = cfg.weekly_bins if cfg.use_weekly else 0
        widths = (cfg.shift_window - 1, cfg.lags, cfg.seasonal_bins, cfg.seasonal_bins, wb, wb, _CAL, _CAL,
                  _CAL * cfg.calib_bins)
        offs = [K.MS_FIXED]
        for w in widths:
            offs.append(offs[-1] + w)
        return cls(*offs)


def _config_vector(cfg: AnomalyConfig) -> np.ndarray:
    cf = np.zeros(K.CF_LEN)
    vals = {
        K.F_LEVEL_ALPHA: cfg.level_alpha, K.F_LONG_ALPHA: cfg.long_alpha, K.F_SHIFT_W: cfg.shift_window,
        K.F_DRIFT_K: cfg.drift_k, K.F_DRIFT_CLIP: cfg.drift_clip, K.F_DRIFT_HL: cfg.drift_half_life,
        K.F_DRIFT_CAP: cfg.drift_cap, K.F_SB: cfg.seasonal_bins, K.F_SALPHA: cfg.seasonal_alpha,
        K.F_USE_WEEKLY: float(cfg.use_weekly), K.F_WB: cfg.weekly_bins if cfg.use_weekly else 0,
        K.F_WALPHA: cfg.weekly_alpha, K.F_WMINAGE: cfg.weekly_min_age, K.F_CWARM: cfg.calib_warmup,
        K.F_CBINS: cfg.calib_bins, K.F_CBPU: cfg.calib_bins_per_unit, K.F_CPOW: cfg.calib_power, K.F_LAGS: cfg.lags,
        K.F_USE_FC: float(cfg.use_forecaster), K.F_USE_HST: float(cfg.use_hst), K.F_HST_EVERY: cfg.hst_every,
        K.F_HST_T: cfg.hst_trees, K.F_HST_H: cfg.hst_height, K.F_HST_W: cfg.hst_window, K.F_EFULL: cfg.e_full,
        K.F_MINTHR: cfg.min_threshold, K.F_LEVEL_IV: cfg.level_interval_s, K.F_SUPP_EV: cfg.suppress_events,
        K.F_SUPP_F: cfg.suppress_factor, K.F_BURST_PEN: cfg.burst_penalty,
        K.F_BURST_DEC: 0.5 ** (1.0 / cfg.burst_half_life), K.F_BURST_GAP: cfg.burst_gap,
        K.F_BURST_SOFT: cfg.burst_softness, K.F_STUCK_MIN: cfg.stuck_min_run,
        K.F_CDECAY: 0.5 ** (-1.0 / cfg.calib_half_life), K.F_HC_ALPHA: cfg.calib_alpha,
        K.F_HC_WARM: max(cfg.calib_warmup, 2 * cfg.hst_window), K.F_SIL_ALPHA: 0.05,
        K.F_DRIFT_TE: cfg.drift_tail_e, K.F_DRIFT_TA: cfg.drift_tail_alpha, K.F_SP_TOL: cfg.spatial_tol,
        K.F_SP_E: cfg.spatial_e, K.F_CONF_FRAC: cfg.confirm_frac, K.F_CONF_EXT: cfg.confirm_extreme,
        K.F_RAMP_TREND: cfg.ramp_trend_alpha, K.F_RAMP_MARGIN: cfg.ramp_margin, K.F_REARM: cfg.rearm_frac,
        K.F_SUPP_PASS: cfg.suppress_pass,
    }
    for k, v in vals.items():
        cf[k] = v
    return cf


# model attribute <-> metric slot column, for the per-metric vectors of `DeviceAnomalyModel`
_MS_VECTORS = {
    "lv_mean": K.LV_MEAN, "lv_mad": K.LV_MAD, "lv_n": K.LV_N, "lg_mean": K.LG_MEAN, "lg_mad": K.LG_MAD,
    "lg_n": K.LG_N, "cu_pos": K.CU_POS, "cu_neg": K.CU_NEG, "cu_ppos": K.CU_PPOS, "cu_scale": K.CU_SCALE,
    "s_mad": K.S_MAD, "s_n": K.S_N, "w_mad": K.W_MAD, "w_n": K.W_N, "t_first": K.T_FIRST, "fc_err": K.FC_ERR,
    "last": K.LAST, "run": K.RUN, "repeat_rate": K.REPEAT, "cu_peak": K.CU_PEAK, "cu_beta": K.CU_BETA,
    "cu_nexc": K.CU_NEXC, "sp_lo": K.SP_LO, "sp_hi": K.SP_HI, "rl_mean": K.RL_MEAN, "rl_mad": K.RL_MAD,
    "rl_slope": K.RL_SLOPE, "df_mad": K.DF_MAD, "cu_anc": K.CU_ANC,
}
_MS_FRESH = {K.LAST: math.nan, K.T_FIRST: math.nan, K.REPEAT: 0.5, K.CU_PPOS: 0.5, K.CU_SCALE: 1.0, K.SP_LO: math.nan,
             K.SP_HI: math.nan}
# column names of a `DeviceRow`: the fixed part of a metric slot's row (`ms`), and a device's row (`ds`)
MS_NAMES = tuple(sorted(_MS_VECTORS, key=_MS_VECTORS.__getitem__))
DS_NAMES = ("c_weight", "hst_last", "hc_mean", "hc_var", "hc_n", "suppress", "burst", "since", "sil_iv", "sil_last",
            "sil_n", "n_rows", "hst_count", "hst_first", "hst_tid", "e_prev",
            "e_alert")
assert MS_NAMES == tuple(_MS_VECTORS) and len(MS_NAMES) == K.MS_FIXED and len(DS_NAMES) == K.DS_COLS


@dataclass
class DeviceRow:
    """One device's rows of a `DeviceBank`, as a checkpoint writes them (`schemas.state`): a dozen arrays, where
    the same state as a `DeviceAnomalyModel` took River tree nodes and ~50 small arrays (encoding took ~1.3 ms).
    `ms_names`/`ds_names` name the row's fixed columns, so a later layout can be mapped (`StateType.upgrade`);
    `trees` are the features the device's HalfSpaceTrees were built from (their shape is rebuilt from them, as
    River builds it), `hl`/`hr` their node masses. Forecasters (one per metric, same order as `names`): `fc` their
    weights and Adam moments flattened, `fc_steps` their steps, `fc_buf` the samples queued for their next
    training step (inputs, then target), `fc_nbuf` how many each."""

    cfg: AnomalyConfig
    names: list[str]
    ms_names: list[str]
    ms: np.ndarray  # (metrics, Layout.end) float64
    ds_names: list[str]
    ds: np.ndarray  # (DS_COLS,) float64; its `hst_tid` is -1: a bank's template numbers are its own
    ignored: int
    trees: list[str] | None
    hl: np.ndarray | None  # (trees, nodes) int32
    hr: np.ndarray | None
    fc: np.ndarray | None  # (metrics, 3 x parameters) float32: params, m, v
    fc_steps: np.ndarray | None  # (metrics,) int64
    fc_buf: np.ndarray | None  # (queued samples, lags + 3) float32
    fc_nbuf: np.ndarray | None  # (metrics,) int64


def _hst_new(cfg: AnomalyConfig):
    from river.anomaly import HalfSpaceTrees

    return HalfSpaceTrees(n_trees=cfg.hst_trees, height=cfg.hst_height, window_size=cfg.hst_window, seed=cfg.seed)


def _hst_build(cfg: AnomalyConfig, features: tuple[str, ...]):
    """The trees River's `HalfSpaceTrees.learn_one` builds on its first sample (features: its sorted keys)."""
    from river.tree.padded import make_padded_tree

    hst = _hst_new(cfg)
    hst.trees = [make_padded_tree(limits={f: hst.limits[f] for f in features}, height=hst.height, padding=0.15,
                                  rng=hst.rng, r_mass=0, l_mass=0) for _ in range(hst.n_trees)]
    hst._tree_nodes = [list(t.iter_dfs()) for t in hst.trees]  # noqa: SLF001 - as River builds them
    return hst


def _bfs(node, k: int, out: list) -> None:
    """Nodes of a complete padded tree by heap index (children of k: 2k+1, 2k+2)."""
    out[k] = node
    if hasattr(node, "feature"):
        _bfs(node.children[0], 2 * k + 1, out)
        _bfs(node.children[1], 2 * k + 2, out)


_WARM = False


def warm_up() -> None:
    """Compile (or load from numba's cache) every kernel once per process, on a tiny bank: cold, this takes ~15 s
    of CPU, which a worker must spend before it joins its consumer group, not on its event loop mid-batch."""
    global _WARM
    if _WARM:
        return
    bank = DeviceBank(capacity=1, train_every=8, hst_window=4, use_weekly=True)
    ts = 1_700_000_000.0 + 300.0 * np.arange(40)
    bank.score_learn_batch(np.full(40, bank.slot(0)), ts, {"m": np.sin(ts)})
    _WARM = True


class DeviceBank:
    """The anomaly models of many devices, one row each; devices are named by any hashable key."""

    def __init__(self, config: AnomalyConfig | None = None, capacity: int = 16, **overrides: object) -> None:
        self.cfg = cfg = make_config(config, **overrides)
        self.lay = Layout.of(cfg)
        self.lay_arr = np.array([self.lay.rec, self.lay.lag, self.lay.sm, self.lay.sc, self.lay.wm, self.lay.wc,
                                 self.lay.ct, self.lay.cn, self.lay.cc, self.lay.end], np.int64)
        self.cf = _config_vector(cfg)
        cap = max(1, capacity)
        t, nodes, inner = cfg.hst_trees, 2 ** (cfg.hst_height + 1) - 1, 2 ** cfg.hst_height - 1
        self.ds = np.zeros((cap, K.DS_COLS))
        self.dm = np.full((cap, cfg.max_metrics), -1, np.int32)
        self.hl = np.zeros((cap, t, nodes), np.int32)
        self.hr = np.zeros((cap, t, nodes), np.int32)
        self.hcol = np.zeros((cap, t, inner), np.int8 if cfg.max_metrics <= 127 else np.int16)
        self.hkind = np.zeros((cap, t, inner), np.int8)
        self.ms = np.zeros((max(1, cap * 2), self.lay.end))
        self.tthr = np.zeros((0, t, inner))  # thresholds of each tree shape (template)
        self.templates: dict[tuple[str, ...], int] = {}
        self.template_feats: list[list[list[str]]] = []  # per template, tree, inner node: its feature
        self.template_keys: list[tuple[str, ...]] = []  # per template: the features River built it from
        self.template_rng: list[tuple] = []  # per template: River's random state after the build
        self._tree_cols: dict[tuple[int, tuple[str, ...]], np.ndarray] = {}  # (template, names) -> node columns, kinds
        self.names: list[list[str]] = [[] for _ in range(cap)]
        self.index: list[dict[str, int]] = [{} for _ in range(cap)]
        self.ignored = np.zeros(cap, np.int64)
        self.fc: list[OnlineMLPForecaster | None] = [None] * len(self.ms)
        self.keys: dict[Hashable, int] = {}
        self._free_dev = list(range(cap - 1, -1, -1))
        self._free_ms = list(range(len(self.ms) - 1, -1, -1))

    # ------------------------------------------------------------------ slots
    def __len__(self) -> int:
        return len(self.keys)

    def slot(self, key: Hashable) -> int:
        """The device's slot (a fresh model for a new key)."""
        s = self.keys.get(key)
        if s is None:
            s = self.keys[key] = self._new_device()
        return s

    def _new_device(self) -> int:
        if not self._free_dev:
            self._grow_devices()
        d = self._free_dev.pop()
        self.ds[d] = 0.0
        self.ds[d, K.C_WEIGHT] = 1.0
        self.ds[d, K.SINCE] = float(1 << 30)
        self.ds[d, K.SIL_LAST] = math.nan
        self.ds[d, K.HST_FIRST] = 1.0
        self.ds[d, K.HST_TID] = -1.0
        self.dm[d] = -1
        self.hl[d] = self.hr[d] = 0
        self.names[d], self.index[d] = [], {}
        self.ignored[d] = 0
        return d

    def _grow_devices(self) -> None:
        old = len(self.ds)
        new = old * 2
        for attr in ("ds", "dm", "hl", "hr", "hcol", "hkind"):
            a = getattr(self, attr)
            b = np.zeros((new,) + a.shape[1:], a.dtype)
            b[:old] = a
            setattr(self, attr, b)
        self.ignored = np.concatenate([self.ignored, np.zeros(new - old, np.int64)])
        self.names += [[] for _ in range(new - old)]
        self.index += [{} for _ in range(new - old)]
        self._free_dev = list(range(new - 1, old - 1, -1)) + self._free_dev

    def _new_metric_slot(self) -> int:
        if not self._free_ms:
            old = len(self.ms)
            b = np.zeros((old * 2, self.ms.shape[1]))
            b[:old] = self.ms
            self.ms = b
            self.fc += [None] * old
            self._free_ms = list(range(2 * old - 1, old - 1, -1))
        s = self._free_ms.pop()
        self.ms[s] = 0.0
        for c, v in _MS_FRESH.items():
            self.ms[s, c] = v
        return s

    def _add_metric(self, d: int, name: str) -> int:
        cfg = self.cfg
        j = len(self.names[d])
        s = self._new_metric_slot()
        self.dm[d, j] = s
        self.names[d].append(name)
        self.index[d][name] = j
        if cfg.use_forecaster:
            self.fc[s] = OnlineMLPForecaster(cfg.lags, cfg.hidden, train_every=cfg.train_every, epochs=cfg.epochs,
                                             seed=cfg.seed)
        return j

    def remove(self, key: Hashable) -> None:
        """Forget a device (its partition went to another worker); its slots are reused."""
        d = self.keys.pop(key)
        for j in range(len(self.names[d])):
            s = int(self.dm[d, j])
            self.fc[s] = None
            self._free_ms.append(s)
        self.dm[d] = -1
        self.names[d], self.index[d] = [], {}
        self._free_dev.append(d)

    # ------------------------------------------------------------------ HST tree shapes
    def _template(self, features: tuple[str, ...]) -> int:
        tid = self.templates.get(features)
        if tid is None:
            hst = _hst_build(self.cfg, features)
            inner = self.tthr.shape[2]
            thr = np.zeros((1,) + self.tthr.shape[1:])
            feats = []
            for tr, tree in enumerate(hst.trees):
                nodes: list = [None] * (2 * inner + 1)
                _bfs(tree, 0, nodes)
                feats.append([nodes[k].feature for k in range(inner)])
                thr[0, tr] = [nodes[k].threshold for k in range(inner)]
            tid = self.templates[features] = len(self.template_feats)
            self.template_feats.append(feats)
            self.template_keys.append(features)
            self.template_rng.append(hst.rng.getstate())
            self.tthr = np.concatenate([self.tthr, thr])
        return tid

    def _set_trees(self, d: int, tid: int) -> None:
        key = (tid, tuple(self.names[d]))
        cols = self._tree_cols.get(key)
        if cols is None:  # the same for every device with these metric names
            idx = self.index[d]
            cols = np.zeros((2,) + self.hcol.shape[1:], np.int64)
            for tr, feats in enumerate(self.template_feats[tid]):
                for k, f in enumerate(feats):
                    name, kind = f.rsplit(":", 1)
                    cols[0, tr, k], cols[1, tr, k] = idx[name], _KINDS.index(kind)
            cols = self._tree_cols[key] = cols
        self.hcol[d], self.hkind[d] = cols[0], cols[1]
        self.ds[d, K.HST_TID] = tid

    def _build_trees_first(self, d: int, xs: np.ndarray) -> None:
        """Before a device's first HST sample: the tree shape River builds from that sample's features."""
        every = self.cfg.hst_every
        n0 = int(self.ds[d, K.N_ROWS])
        m = len(self.names[d])
        ok = ~np.isnan(xs[:, :m])
        rows = np.flatnonzero(((n0 + np.arange(len(xs))) % every == 0) & ok.any(axis=1))
        if len(rows):
            present = [self.names[d][j] for j in np.flatnonzero(ok[rows[0]])]
            self._set_trees(d, self._template(tuple(sorted(f"{nm}:{k}" for nm in present for k in _KINDS))))

    # ------------------------------------------------------------------ scoring
    def score_learn_batch(self, devices: np.ndarray, ts: np.ndarray, metrics: Mapping[str, np.ndarray]) -> BatchResult:
        """Prequential (score, then learn) for rows of many devices: row i is device slot ``devices[i]`` at ``ts[i]``
        with ``metrics[name][i]`` (NaN: the reading has no such metric). Each device's rows, in their order here,
        go through its model as one `DeviceAnomalyModel.score_learn_many` call would; a device learns a metric
        name when one of its rows has a value for it."""
        cfg = self.cfg
        devices = np.asarray(devices, dtype=np.int64).reshape(-1)
        ts = np.asarray(ts, dtype=float).reshape(-1)
        n = len(ts)
        if len(devices) != n or any(len(np.asarray(v)) != n for v in metrics.values()):
            raise ValueError("devices, ts and every metric column must have one entry per row")
        if n == 0:
            return BatchResult(np.zeros(0), np.zeros(0, bool), np.zeros(0), [])
        order = np.argsort(devices, kind="stable")
        dev_sorted = devices[order]
        starts = np.flatnonzero(np.r_[True, dev_sorted[1:] != dev_sorted[:-1]])
        counts = np.diff(np.r_[starts, n])
        uniq = dev_sorted[starts]
        cols = {name: np.asarray(v, dtype=float)[order] for name, v in metrics.items()}
        # new metrics per device (in the order of `metrics`, as the model registers them)
        present = {name: np.logical_or.reduceat(~np.isnan(c), starts) for name, c in cols.items()}
        uniq_l = uniq.tolist()
        for name, pres in present.items():
            for g in np.flatnonzero(pres).tolist():
                d = uniq_l[g]
                if name not in self.index[d]:
                    if len(self.names[d]) >= cfg.max_metrics:
                        self.ignored[d] += 1
                        continue
                    self._add_metric(d, name)
        widths = [len(self.names[d]) for d in uniq_l]
        width = max(widths)
        grp = np.repeat(np.arange(len(uniq)), counts)
        X = np.full((n, width + 1), np.nan)
        X[:, width] = ts[order]
        rows = np.arange(n)
        for name, c in cols.items():
            kk = np.array([self.index[d].get(name, -1) for d in uniq_l], np.int64)[grp]
            sel = kk >= 0
            X[rows[sel], kk[sel]] = c[sel]
        if cfg.use_hst:
            for g in np.flatnonzero(self.ds[uniq, K.HST_TID] < 0).tolist():
                d = uniq_l[g]
                self._build_trees_first(d, X[starts[g]:starts[g] + counts[g]])
        scores = np.empty(n)
        best = np.full(n, -1, np.int64)
        bm = cfg.batch_max
        for r in range((int(counts.max()) + bm - 1) // bm):
            act = np.flatnonzero(counts > r * bm)
            dev = uniq[act]
            lo = starts[act] + r * bm
            hi = np.minimum(lo + bm, starts[act] + counts[act])
            fc_item = np.full((len(act), max(1, width)), -1, np.int64)
            if cfg.use_forecaster:
                pred, items = self._forecast(dev, lo, hi, X, fc_item)
            else:
                pred, items = np.zeros(1), None
            K.run_round(dev, lo, hi, X, self.dm, self.ms, self.ds, self.lay_arr, self.cf, self.hl, self.hr,
                        self.hcol, self.hkind, self.tthr, fc_item, pred, scores, best)
            if items is not None:
                self._forecast_learn(*items)
        out_scores = np.empty(n)
        out_scores[order] = scores
        best_names: list[str | None] = [None] * n
        bl = best.tolist()
        for i, (o, g) in enumerate(zip(order.tolist(), grp.tolist())):
            j = bl[i]
            best_names[o] = self.names[uniq_l[g]][j] if j >= 0 else None
        thr = cfg.min_threshold
        return BatchResult(out_scores, out_scores >= thr, np.full(n, thr), best_names)

    def _forecast(self, dev, lo, hi, X, fc_item):
        """Each device block's forecasts, one matrix product per (device, metric) with its own weights."""
        cfg = self.cfg
        rows = int((hi - lo).sum()) * fc_item.shape[1]
        xin = np.empty((rows, cfg.lags + 2), np.float32)
        xn = np.empty(rows)
        cap = len(dev) * fc_item.shape[1]
        item_dev = np.empty(cap, np.int64)
        item_col = np.empty(cap, np.int64)
        item_off = np.empty(cap, np.int64)
        k = K.fc_inputs(dev, lo, hi, X, self.dm, self.ms, self.lay_arr, self.cf, item_dev, item_col, item_off, xin, xn)
        a, j, off = item_dev[:k], item_col[:k], item_off[:k]
        fc_item[a, j] = off
        pred = np.zeros(max(1, rows))
        fc = self.fc
        slot, length = self.dm[dev[a], j], (hi - lo)[a]
        slots = list(zip(slot.tolist(), off.tolist(), length.tolist()))
        for b in np.unique(length).tolist():  # the items of one block length as stacks (`predict_stacked`)
            some = np.flatnonzero(length == b)
            rows_of = off[some][:, None] + np.arange(b)
            pred[rows_of] = predict_stacked([fc[s] for s in slot[some].tolist()], xin[rows_of])
        return pred, (slots, xin, xn)

    def _forecast_learn(self, slots, xin, xn) -> None:
        """Each item's rows with a target, clipped. The clip and the NaN count are taken for the whole round at once
        (elementwise, so the same values); an item without NaN passes its rows as they are, copied."""
        if not slots:
            return
        end = slots[-1][1] + slots[-1][2]
        y = np.clip(xn[:end], -10.0, 10.0).astype(np.float32)
        nan = np.isnan(y)
        nans = np.r_[0, np.cumsum(nan)].tolist()
        fc = self.fc
        due = []
        for s, o, b in slots:
            missing = nans[o + b] - nans[o]
            if missing == b:
                continue  # no row with a target
            rows = slice(o, o + b)
            if missing:
                ok = ~nan[rows]
                xs, ys = xin[rows][ok], y[rows][ok]  # boolean indexing copies
            else:
                xs, ys = xin[rows].copy(), y[rows].copy()
            if fc[s].queue_many(xs, ys):
                due.append(fc[s])
        if due:  # together: the same numbers as one by one (`train_many`), in a stack per shape
            train_many(due)

    # ------------------------------------------------------------------ one device in and out
    def extract(self, key: Hashable, scoring: bool = True) -> DeviceAnomalyModel:
        """The device's state as a `DeviceAnomalyModel` (a copy: the bank keeps its row). `scoring=False`: a model
        that is only encoded (a checkpoint), without River's flat lists of tree nodes, which restore rebuilds
        anyway (listing them took a fifth of a checkpoint's time)."""
        d = self.keys[key]
        cfg, lay = self.cfg, self.lay
        m = DeviceAnomalyModel(cfg)
        for name in self.names[d]:
            m._add_metric(name)  # noqa: SLF001 - the model's own registration, then its values from the row
        k = len(m.names)
        sl = self.dm[d, :k].astype(np.int64)
        rows = self.ms[sl]
        for attr, c in _MS_VECTORS.items():
            setattr(m, attr, rows[:, c].copy())
        w1, wb = cfg.shift_window - 1, lay.wc - lay.wm
        m.recent = rows[:, lay.rec:lay.rec + w1].T.copy()
        m.lagbuf = rows[:, lay.lag:lay.lag + cfg.lags].T.copy()
        m.s_means = rows[:, lay.sm:lay.sc].T.copy()
        m.s_counts = rows[:, lay.sc:lay.wm].T.copy()
        m.w_means = rows[:, lay.wm:lay.wm + wb].T.copy()
        m.w_counts = rows[:, lay.wc:lay.wc + wb].T.copy()
        m.c_total = rows[:, lay.ct:lay.cn].copy()
        m.c_n = rows[:, lay.cn:lay.cc].copy()
        m.c_counts = rows[:, lay.cc:lay.end].reshape(k, _CAL, cfg.calib_bins).copy()
        if cfg.use_forecaster:
            m.fc = [self.fc[s].snapshot() for s in sl.tolist()]
        r = self.ds[d]
        m.c_weight = float(r[K.C_WEIGHT])
        m.hst_last = float(r[K.HST_LAST])
        m.hst_calib.mean, m.hst_calib.var, m.hst_calib.n = float(r[K.HC_MEAN]), float(r[K.HC_VAR]), int(r[K.HC_N])
        m.suppress_left, m.burst, m.since_cross = int(r[K.SUPPRESS]), float(r[K.BURST]), int(r[K.SINCE])
        m.e_prev, m.e_alert = float(r[K.E_PREV]), float(r[K.E_ALERT])
        sil = m.silence
        sil.interval, sil.n = float(r[K.SIL_IV]), int(r[K.SIL_N])
        sil.last_ts = None if math.isnan(r[K.SIL_LAST]) else float(r[K.SIL_LAST])
        m.n = int(r[K.N_ROWS])
        m.ignored_metrics = int(self.ignored[d])
        tid = int(r[K.HST_TID])
        if cfg.use_hst and tid >= 0:
            m.hst = self._hst_of(d, tid, scoring)
            m.hst.counter = int(r[K.HST_COUNT])
            m.hst._first_window = bool(r[K.HST_FIRST])  # noqa: SLF001
        return m

    def row(self, key: Hashable) -> DeviceRow:
        """The device's state as its rows (copies), for a checkpoint: ~30 us, where `extract` took ~0.5 ms."""
        d = self.keys[key]
        cfg = self.cfg
        names = list(self.names[d])
        sl = self.dm[d, :len(names)].astype(np.int64)
        tid = int(self.ds[d, K.HST_TID])
        has_trees = cfg.use_hst and tid >= 0
        fc = steps = buf = nbuf = None
        if cfg.use_forecaster:
            fcs = [self.fc[s] for s in sl.tolist()]
            fc = np.array([f.flat() for f in fcs], np.float32).reshape(len(fcs), _fc_size(cfg))
            steps = np.array([f.steps for f in fcs], np.int64)
            queued = [f.queued() for f in fcs]
            nbuf = np.array([len(q) for q in queued], np.int64)
            buf = np.concatenate(queued) if queued else np.zeros((0, cfg.lags + 3), np.float32)
        ds = self.ds[d].copy()
        ds[K.HST_TID] = -1.0  # this bank's template number: `trees` names the shape
        return DeviceRow(cfg, names, list(MS_NAMES), self.ms[sl], list(DS_NAMES), ds, int(self.ignored[d]),
                         list(self.template_keys[tid]) if has_trees else None, self.hl[d].copy() if has_trees else None,
                         self.hr[d].copy() if has_trees else None, fc, steps, buf, nbuf)

    def snapshot(self, keys: list[Hashable]) -> DeviceBank:
        """A bank holding a copy of these devices only, taken in a few array copies: a checkpoint takes it in
        step with its offset marks and writes its devices' `row`s off the scoring loop, while this bank learns on."""
        snap = object.__new__(DeviceBank)
        snap.__dict__.update(self.__dict__)  # config, layout, tree templates (only ever appended to)
        devs = np.array([self.keys[k] for k in keys], np.int64)
        for attr in ("ds", "dm", "hl", "hr", "hcol", "hkind", "ignored"):
            setattr(snap, attr, getattr(self, attr)[devs])  # fancy indexing: copies
        used = snap.dm >= 0
        slots = snap.dm[used]
        snap.ms = self.ms[slots]
        snap.dm[used] = np.arange(len(slots), dtype=snap.dm.dtype)  # row-major: the order `slots` was taken in
        snap.fc = [None if self.fc[s] is None else self.fc[s].snapshot() for s in slots.tolist()]
        snap.names = [list(self.names[d]) for d in devs.tolist()]
        snap.index = [dict(self.index[d]) for d in devs.tolist()]
        snap.template_feats, snap.template_keys = list(self.template_feats), list(self.template_keys)
        snap.template_rng, snap.templates = list(self.template_rng), dict(self.templates)
        snap.keys = {k: i for i, k in enumerate(keys)}
        snap._free_dev, snap._free_ms, snap._tree_cols = [], [], dict(self._tree_cols)
        return snap

    def _hst_of(self, d: int, tid: int, scoring: bool = True):
        """The device's trees as River objects (the template's shape and thresholds, the device's masses)."""
        from river.tree.padded import PaddedBranch, PaddedLeaf

        hst = _hst_new(self.cfg)
        for f in self.template_keys[tid]:
            hst.limits[f]  # noqa: B018 - River's build leaves each feature's default range in `limits`
        hst.rng.setstate(self.template_rng[tid])
        inner = self.hcol.shape[2]
        hl, hr = self.hl[d].tolist(), self.hr[d].tolist()
        trees = []
        for tr, feats in enumerate(self.template_feats[tid]):
            thr = self.tthr[tid, tr].tolist()
            nodes: list = [None] * inner + [PaddedLeaf(l_mass=hl[tr][k], r_mass=hr[tr][k]) for k in range(inner, 2 * inner + 1)]
            for k in range(inner - 1, -1, -1):  # children before parents (heap order)
                nodes[k] = PaddedBranch(nodes[2 * k + 1], nodes[2 * k + 2], feats[k], thr[k], hl[tr][k], hr[tr][k])
            trees.append(nodes[0])
        hst.trees = trees
        if scoring:
            hst._tree_nodes = [list(t.iter_dfs()) for t in trees]  # noqa: SLF001 - as River builds them
        return hst

    def learned(self, key: Hashable) -> int:
        """Readings the device's model has learned."""
        return int(self.ds[self.keys[key], K.N_ROWS])

    def insert(self, key: Hashable, model: DeviceAnomalyModel | DeviceRow) -> int:
        """Put a device's state (a restored checkpoint, a device from another bank) into a row: a `DeviceRow`, or
        a `DeviceAnomalyModel` (checkpoints written before rows). ValueError for a state that does not fit."""
        if type(model) is DeviceRow:
            return self._insert_row(key, model)
        if type(model) is not DeviceAnomalyModel:
            raise ValueError(f"a {type(model).__name__} is not a device's model")
        if vars(model.cfg) != vars(self.cfg):
            raise ValueError("the model's configuration differs from the bank's")
        if key in self.keys:
            self.remove(key)
        d = self.keys[key] = self._new_device()
        cfg, lay = self.cfg, self.lay
        for j, name in enumerate(model.names):
            self._add_metric(d, name)
            s = int(self.dm[d, j])
            row = self.ms[s]
            for attr, c in _MS_VECTORS.items():
                row[c] = getattr(model, attr)[j]
            w1, wb = cfg.shift_window - 1, lay.wc - lay.wm
            row[lay.rec:lay.rec + w1] = model.recent[:, j]
            row[lay.lag:lay.lag + cfg.lags] = model.lagbuf[:, j]
            row[lay.sm:lay.sc] = model.s_means[:, j]
            row[lay.sc:lay.wm] = model.s_counts[:, j]
            row[lay.wm:lay.wm + wb] = model.w_means[:, j]
            row[lay.wc:lay.wc + wb] = model.w_counts[:, j]
            row[lay.ct:lay.cn] = model.c_total[j]
            row[lay.cn:lay.cc] = model.c_n[j]
            row[lay.cc:lay.end] = model.c_counts[j].reshape(-1)
            if cfg.use_forecaster:
                self.fc[s] = copy.deepcopy(model.fc[j])
        r = self.ds[d]
        r[K.C_WEIGHT], r[K.HST_LAST] = model.c_weight, model.hst_last
        r[K.HC_MEAN], r[K.HC_VAR], r[K.HC_N] = model.hst_calib.mean, model.hst_calib.var, model.hst_calib.n
        r[K.SUPPRESS], r[K.BURST], r[K.SINCE] = model.suppress_left, model.burst, model.since_cross
        r[K.E_PREV], r[K.E_ALERT] = model.e_prev, model.e_alert
        sil = model.silence
        r[K.SIL_IV], r[K.SIL_N] = sil.interval, sil.n
        r[K.SIL_LAST] = math.nan if sil.last_ts is None else sil.last_ts
        r[K.N_ROWS] = model.n
        self.ignored[d] = model.ignored_metrics
        hst = model.hst
        if cfg.use_hst and hst is not None and hst.trees:
            feats = tuple(sorted(hst.limits))
            tid = self._template(feats)
            self._set_trees(d, tid)
            for tr, tree in enumerate(hst.trees):
                nodes: list = [None] * self.hl.shape[2]
                _bfs(tree, 0, nodes)
                for kk, node in enumerate(nodes):
                    self.hl[d, tr, kk], self.hr[d, tr, kk] = node.l_mass, node.r_mass
            r[K.HST_COUNT] = hst.counter
            r[K.HST_FIRST] = float(hst._first_window)  # noqa: SLF001
        return d

    def _insert_row(self, key: Hashable, row: DeviceRow) -> int:
        cfg = self.cfg
        _check_row(row, cfg, self.lay, self.hl.shape[1:])
        if key in self.keys:
            self.remove(key)
        d = self.keys[key] = self._new_device()
        for name in row.names:
            self._add_metric(d, name)
        k = len(row.names)
        sl = self.dm[d, :k].astype(np.int64)
        self.ms[sl] = row.ms
        self.ds[d] = row.ds
        self.ds[d, K.HST_TID] = -1.0
        self.ignored[d] = row.ignored
        if row.trees is not None:
            self._set_trees(d, self._template(tuple(row.trees)))
            self.hl[d], self.hr[d] = row.hl, row.hr
        if cfg.use_forecaster:
            starts = np.r_[0, np.cumsum(row.fc_nbuf)].tolist()
            for j, s in enumerate(sl.tolist()):
                f = self.fc[s]
                f.load_flat(row.fc[j])
                f.steps = int(row.fc_steps[j])
                f.load_queued(row.fc_buf[starts[j]:starts[j + 1]])
        return d

    # ------------------------------------------------------------------ size
    def bytes_per_device(self) -> dict[str, float]:
        """State bytes per device held now: the bank's arrays (rows in use) and the forecaster objects."""
        nd = max(1, len(self.keys))
        used_ms = sum(len(self.names[d]) for d in self.keys.values())
        arrays = (self.ds[0].nbytes + self.dm[0].nbytes + self.hl[0].nbytes + self.hr[0].nbytes + self.hcol[0].nbytes
                  + self.hkind[0].nbytes) * nd + self.ms[0].nbytes * used_ms
        fc = 0
        for d in self.keys.values():
            for j in range(len(self.names[d])):
                f = self.fc[int(self.dm[d, j])]
                if f is not None:
                    fc += sum(p.nbytes for p in f.params + f.m + f.v) + sum(b.nbytes for b in f.buf_x + f.buf_y)
        return {"arrays": arrays / nd, "forecasters": fc / nd, "total": (arrays + fc) / nd}


def _fc_size(cfg: AnomalyConfig) -> int:
    """Length of one forecaster's `flat()` in a bank of this configuration."""
    return OnlineMLPForecaster.flat_size(cfg.lags, cfg.hidden)


def _check_row(row: DeviceRow, cfg: AnomalyConfig, lay: Layout, tree_shape: tuple[int, ...]) -> None:
    """ValueError unless the row fits a bank of this configuration: a checkpoint is data from outside."""
    if type(row.cfg) is not AnomalyConfig or vars(row.cfg) != vars(cfg):
        raise ValueError("the row's configuration differs from the bank's")
    if row.ms_names != list(MS_NAMES) or row.ds_names != list(DS_NAMES):
        raise ValueError("the row's columns differ from the bank's")
    names = row.names
    if type(names) is not list or not all(type(n) is str for n in names) or len(set(names)) != len(names) \
            or len(names) > cfg.max_metrics:
        raise ValueError("the row's metric names are not distinct strings within max_metrics")
    k = len(names)

    def arr(a: object, shape: tuple[int, ...], dtype: type, what: str) -> None:
        if type(a) is not np.ndarray or a.shape != shape or a.dtype != dtype:
            raise ValueError(f"the row's {what} is not a {dtype.__name__} array of shape {shape}")

    arr(row.ms, (k, lay.end), np.float64, "ms")
    arr(row.ds, (K.DS_COLS,), np.float64, "ds")
    if type(row.ignored) is not int or row.ignored < 0:
        raise ValueError("the row's ignored count is not a count")
    if row.trees is not None:
        if not cfg.use_hst or type(row.trees) is not list or not row.trees or \
                not all(type(f) is str and f.rpartition(":")[0] in names and f.rpartition(":")[2] in _KINDS for f in row.trees) \
                or row.trees != sorted(set(row.trees)):
            raise ValueError("the row's tree features are not sorted features of its metrics")
        arr(row.hl, tree_shape, np.int32, "hl")
        arr(row.hr, tree_shape, np.int32, "hr")
    elif row.hl is not None or row.hr is not None:
        raise ValueError("the row has tree masses without trees")
    if cfg.use_forecaster:
        arr(row.fc, (k, _fc_size(cfg)), np.float32, "fc")
        arr(row.fc_steps, (k,), np.int64, "fc_steps")
        arr(row.fc_nbuf, (k,), np.int64, "fc_nbuf")
        if (row.fc_nbuf < 0).any():
            raise ValueError("the row's fc_nbuf is negative")
        arr(row.fc_buf, (int(row.fc_nbuf.sum()), cfg.lags + 3), np.float32, "fc_buf")
    elif any(a is not None for a in (row.fc, row.fc_steps, row.fc_buf, row.fc_nbuf)):
        raise ValueError("the row has forecasters, the bank none")
