"""Compiled kernels of the device bank (`bank.py`): one block of rows of many devices per call.

Why: `DeviceAnomalyModel` pays a dozen NumPy calls, seven compiled ones (`model_kernels.py`; ~200 NumPy calls
before), a River HST walk and its forecasters per device and block, so a batch of many devices costs Python overhead
per device. These kernels do the same arithmetic with scalar loops over the bank's
rows (state per metric slot in `ms`, per device in `ds`), in the same order as the NumPy code (running products
and sums row by row, histogram sums gathered before they are added), so results agree to float rounding.
Layout of the rows: `bank.py` (`Layout`); the constants below name the columns.
"""

from __future__ import annotations

import math

import numba
import numpy as np

# per metric slot (ms columns)
LV_MEAN, LV_MAD, LV_N, LG_MEAN, LG_MAD, LG_N, CU_POS, CU_NEG, CU_PPOS, CU_SCALE = range(10)
S_MAD, S_N, W_MAD, W_N, T_FIRST, FC_ERR, LAST, RUN, REPEAT = range(10, 19)
CU_PEAK, CU_BETA, CU_NEXC = range(19, 22)  # drift's upper tail: running excursion peak, mean excess, excursions
SP_LO, SP_HI = 22, 23  # range of the readings so far (spatial anomaly; NaN: none yet)
# the ramp level (Holt): level, spread around level + trend, trend per row; spread of row-to-row differences
RL_MEAN, RL_MAD, RL_SLOPE, DF_MAD = 24, 25, 26, 27
CU_ANC = 28  # the drift scale an excursion beyond the tail point started under (0: none; -1: spent by an alert)
MS_FIXED = 29
# per device (ds columns)
C_WEIGHT, HST_LAST, HC_MEAN, HC_VAR, HC_N, SUPPRESS, BURST, SINCE, SIL_IV, SIL_LAST, SIL_N, N_ROWS, \
    HST_COUNT, HST_FIRST, HST_TID, E_PREV, E_ALERT = range(17)
DS_COLS = 17
# layout offsets (lay entries): first column of each variable-width part of an ms row
L_REC, L_LAG, L_SM, L_SC, L_WM, L_WC, L_CT, L_CN, L_CC, L_END = range(10)
# configuration (cf entries)
(F_LEVEL_ALPHA, F_LONG_ALPHA, F_SHIFT_W, F_DRIFT_K, F_DRIFT_CLIP, F_DRIFT_HL, F_DRIFT_CAP, F_SB, F_SALPHA,
 F_USE_WEEKLY, F_WB, F_WALPHA, F_WMINAGE, F_CWARM, F_CBINS, F_CBPU, F_CPOW, F_LAGS, F_USE_FC, F_USE_HST,
 F_HST_EVERY, F_HST_T, F_HST_H, F_HST_W, F_EFULL, F_MINTHR, F_LEVEL_IV, F_SUPP_EV, F_SUPP_F, F_BURST_PEN,
 F_BURST_DEC, F_BURST_GAP, F_BURST_SOFT, F_STUCK_MIN, F_CDECAY, F_HC_ALPHA, F_HC_WARM, F_SIL_ALPHA,
 F_DRIFT_TE, F_DRIFT_TA, F_SP_TOL, F_SP_E, F_CONF_FRAC, F_CONF_EXT, F_RAMP_TREND, F_RAMP_MARGIN, F_REARM,
 F_SUPP_PASS) = range(48)
CF_LEN = 48

_CAL = 5
_NC = 8
_DRIFT, _STUCK, _HST = 5, 6, 7
_FORECAST = 3
_LN10 = math.log(10.0)
_SQRT2 = math.sqrt(2.0)
_WEEK = 604800.0

_jit = numba.njit(cache=True, nogil=True)


@_jit
def _neg_log10_tail(z):
    if z < 5.0:
        q = 0.5 * math.erfc(z / _SQRT2)
        return -math.log10(q) if q > 0 else 0.0
    return (0.5 * z * z + math.log(z * 2.5066282746310002) - math.log1p(-1.0 / (z * z))) / _LN10


@_jit
def _gt_evidence(ds, d, raw, warmup):
    """`stats.GaussianTail.evidence` on the device's HST calibrator."""
    if ds[d, HC_N] < warmup:
        return 0.0
    u = math.log1p(raw)
    var = ds[d, HC_VAR]
    sd = math.sqrt(var) if var > 1e-12 else 1e-6
    z = (u - ds[d, HC_MEAN]) / sd
    return _neg_log10_tail(z) if z > 0 else 0.0


@_jit
def _gt_update(ds, d, raw, alpha, warmup):
    """`stats.GaussianTail.update`."""
    u = math.log1p(raw)
    n = ds[d, HC_N]
    if n == 0:
        ds[d, HC_MEAN] = u
        ds[d, HC_N] = 1.0
        return
    a = max(alpha, 1.0 / (n + 1))
    sd = math.sqrt(ds[d, HC_VAR])
    if n > warmup and sd > 0:
        u = min(u, ds[d, HC_MEAN] + 4.0 * sd)
    dd = u - ds[d, HC_MEAN]
    ds[d, HC_MEAN] += a * dd
    ds[d, HC_VAR] = (1 - a) * (ds[d, HC_VAR] + a * dd * dd)
    ds[d, HC_N] = n + 1


@_jit
def _ewm_rows(y0, x, a, out):
    """``y_t = y_{t-1} + a_t (x_t - y_{t-1})`` for one column in closed form (running product of 1 - a, running sum
    of a x over it; 0 <= a <= 0.5 keeps the product far from 0 in a block): every row's value into `out`, returns the
    last (y0 for no rows). `model_kernels` learns the per-device model with it too."""
    p = 1.0
    cs = 0.0
    y = y0
    for t in range(x.shape[0]):
        p = p * (1.0 - a[t]) if t else 1.0 - a[t]
        cs = cs + a[t] * x[t] / p if t else a[t] * x[t] / p
        y = p * (y0 + cs)
        out[t] = y
    return y


@_jit
def _ewm_last(y0, x, a):
    p = 1.0
    cs = 0.0
    y = y0
    for t in range(x.shape[0]):
        p = p * (1.0 - a[t]) if t else 1.0 - a[t]
        cs = cs + a[t] * x[t] / p if t else a[t] * x[t] / p
        y = p * (y0 + cs)
    return y


@_jit
def leading_side(p, n, tie):
    """The drift CUSUM side that leads: 1 the upper sum (`p`), -1 the lower (`n`), `tie` when they are equal."""
    return 1 if p > n else (-1 if n > p else tie)


@_jit
def anchor_step(p, n, p_prev, n_prev, side, anc, s0, mu, anc_ok, e0, te, nexc, cu_beta):
    """One valid row of the drift's anchored score: an excursion beyond the tail point (`s0`) is also scored against
    the scale `mu` it started under (`anc`; 0: none, -1: spent by an alert), so a young model's scale, which learns
    the excursion row by row, does not learn a slow climb away. The anchor belongs to the CUSUM side that leads
    (`side`: 1 upper, -1 lower, 0 none yet; `p`, `n` this row's sums, `*_prev` the last valid row's): when the other
    side takes over, a new excursion begins with no anchor, so a climb that starts while the lower sum still drains
    a door's aftermath can cross the tail point afresh. Returns the new anchor, the anchored evidence (-inf without
    one) and the side. Shared by the bank's kernel and `DeviceAnomalyModel` (same arithmetic)."""
    new_side = leading_side(p, n, side)
    c, c_prev = (p, p_prev) if new_side == 1 else (n, n_prev)
    if c <= 0:
        anc = 0.0
    else:
        if side != 0 and new_side != side:
            anc = 0.0
        if c > s0 and anc == 0 and c_prev <= s0 and anc_ok:
            anc = mu
    if anc <= 0:
        return anc, -math.inf, new_side
    ea = e0 + c / (anc * _LN10)
    if nexc > 0:
        ea = min(ea, te + (c - (te - e0) * anc * _LN10) / (max(cu_beta, anc) * _LN10))
    return anc, ea, new_side


@_jit
def ramp_learn(lvl, tr, mad, n0, x, valid, alpha, beta):
    """Holt's linear smoothing of one metric over a block (level at `alpha`, as the plain level, trend at `beta`):
    returns the level, trend and mean absolute error around level + trend. Why: on a steady ramp the plain level lags
    by slope / alpha and its spread follows that lag, so a spike on a ramp is measured against the ramp, not the noise.
    `n0`: readings learned before the block; readings clipped around the block start's forecast (4 spreads), as the
    plain level's are around its mean. Shared by the bank's kernel and `DeviceAnomalyModel` (same arithmetic)."""
    B = x.shape[0]
    if n0 == 0:
        for i in range(B):
            if valid[i]:
                lvl = x[i]
                break
    lvl0, tr0 = lvl, tr
    lim = 4.0 * 1.2533 * mad
    use_lim = n0 > 10 and lim > 0
    cum = 0.0
    for i in range(B):
        v = 1.0 if valid[i] else 0.0
        cum = cum + v
        nprev = n0 + cum - v
        if not (valid[i] and nprev >= 1):
            continue
        a = max(alpha, 1.0 / (nprev + 1.0))
        pr = lvl + tr
        c0 = lvl0 + tr0 * (i + 1)
        xi = min(max(x[i], c0 - lim), c0 + lim) if use_lim else x[i]
        mad = mad + a * (abs(xi - pr) - mad)
        nl = pr + a * (xi - pr)
        if nprev >= 2:
            tr = tr + beta * (nl - lvl - tr)
        lvl = nl
    return lvl, tr, mad


@_jit
def diff_learn(prev, mad, n0, x, valid, alpha):
    """Mean absolute difference of consecutive readings of one metric (weight `alpha`, more while young; clipped at 6
    spreads): the noise floor of the ramp level, which a ramp, unlike the long level's spread, does not inflate.
    `prev`: the last reading before the block (NaN: none); `n0`: readings learned before the block."""
    n = n0
    for i in range(x.shape[0]):
        if not valid[i]:
            continue
        if not math.isnan(prev):
            d = abs(x[i] - prev)
            if n > 10 and mad > 0:
                d = min(d, 6.0 * 1.2533 * mad)
            mad = mad + max(alpha, 1.0 / (n + 1.0)) * (d - mad)
        n += 1.0
        prev = x[i]
    return mad


@_jit
def _cusum(s0, dv, out):
    """``S_t = max(0, S_{t-1} + d_t)`` for one column, closed form (Lindley), as `model_kernels.score_block`."""
    c = 0.0
    mn = 0.0
    for t in range(dv.shape[0]):
        c = c + dv[t] if t else dv[t]
        mn = min(mn, c) if t else c
        out[t] = c - min(mn, -s0)


@_jit
def _xn_col(ms, s, x, j, B):
    """Normalised values of one metric (`xn`: NaN where missing), against the long level at the block start."""
    lgs = 1.2533 * ms[s, LG_MAD]
    lgs = lgs if lgs > 1e-9 else 1.0
    out = np.empty(B)
    for i in range(B):
        v = x[i, j]
        out[i] = np.nan if math.isnan(v) else min(max((v - ms[s, LG_MEAN]) / lgs, -10.0), 10.0)
    return out


@_jit
def fc_inputs(dev, lo, hi, X, dm, ms, lay, cf, item_dev, item_col, item_off, xin, xn_out):
    """Forecaster inputs of one round: for each device block whose metric has more than `lags` rows of history,
    its rows' lag windows + time of day (float32, as `model._score_block`) and their normalised targets.
    Returns the number of items written; `item_off[i]` is the first row in `xin` of item i."""
    lags = int(cf[F_LAGS])
    lag0 = lay[L_LAG]
    n_items = 0
    off = 0
    for a in range(dev.shape[0]):
        d = dev[a]
        B = hi[a] - lo[a]
        x = X[lo[a]:hi[a]]
        for j in range(dm.shape[1]):
            s = dm[d, j]
            if s < 0:
                break
            if not ms[s, LG_N] > lags:
                continue
            xn = _xn_col(ms, s, x, j, B)
            seq = np.empty(lags + B)
            for k in range(lags):
                seq[k] = ms[s, lag0 + k]
            for i in range(B):
                v = xn[i]
                seq[lags + i] = seq[lags + i - 1] if math.isnan(v) else v
            for i in range(B):
                t = X[lo[a] + i, X.shape[1] - 1]
                ang = (t % 86400.0) / 86400.0 * (2.0 * math.pi)
                for k in range(lags):
                    xin[off + i, k] = np.float32(seq[i + k])
                xin[off + i, lags] = np.float32(math.sin(ang))
                xin[off + i, lags + 1] = np.float32(math.cos(ang))
                xn_out[off + i] = xn[i]
            item_dev[n_items] = a
            item_col[n_items] = j
            item_off[n_items] = off
            n_items += 1
            off += B
    return n_items


@_jit
def _evidence(ms, s, lay, cf, raw, c):
    """`model_kernels.evidence` for one metric slot and component."""
    nb = int(cf[F_CBINS])
    cc = lay[L_CC] + c * nb
    total = ms[s, lay[L_CT] + c]
    if not (ms[s, lay[L_CN] + c] >= cf[F_CWARM] and total > 0 and raw > 0.0):
        return 0.0
    u = math.log1p(max(raw, 0.0))
    b = min(int(u * cf[F_CBPU]), nb - 1)
    top = -1
    for k in range(nb - 1, -1, -1):
        if ms[s, cc + k] > 0:
            top = k
            break
    tot = total
    if b <= top:
        t = 0.0
        for k in range(nb - 1, b - 1, -1):
            t = t + ms[s, cc + k] if k != nb - 1 else ms[s, cc + k]
        e = -math.log10(max(t, 1e-300) / tot) if t < tot else 0.0
    else:
        base = -math.log10(max(ms[s, cc + top] / tot, 1e-300)) if top >= 0 else 0.0
        edge = (top + 1) / cf[F_CBPU]
        e = base + cf[F_CPOW] * (u - edge) / _LN10
    return max(e, 0.0)


@_jit
def _hst_walk_score(hl, hr, hcol, hkind, tthr, d, tid, feats, valid_row, height, size_limit, tr):
    k = 0
    depth_pow = 1
    score = 0.0
    for _ in range(height):
        r = hr[d, tr, k]
        score += r * depth_pow
        if r < size_limit:
            return score
        j = hcol[d, tr, k]
        if valid_row[j]:
            k = 2 * k + 1 if feats[j, hkind[d, tr, k]] < tthr[tid, tr, k] else 2 * k + 2
        else:
            k = 2 * k + 2 if hl[d, tr, 2 * k + 1] < hl[d, tr, 2 * k + 2] else 2 * k + 1
        depth_pow <<= 1
    score += hr[d, tr, k] * depth_pow
    return score


@_jit
def _hst_learn(hl, hr, hcol, hkind, tthr, ds, d, tid, feats, valid_row, height, window):
    for tr in range(hl.shape[1]):
        k = 0
        for _ in range(height):
            hl[d, tr, k] += 1
            j = hcol[d, tr, k]
            if valid_row[j]:
                k = 2 * k + 1 if feats[j, hkind[d, tr, k]] < tthr[tid, tr, k] else 2 * k + 2
            else:
                k = 2 * k + 2 if hl[d, tr, 2 * k + 1] < hl[d, tr, 2 * k + 2] else 2 * k + 1
        hl[d, tr, k] += 1
    ds[d, HST_COUNT] += 1
    if ds[d, HST_COUNT] == window:
        for tr in range(hl.shape[1]):
            for k in range(hl.shape[2]):
                hr[d, tr, k] = hl[d, tr, k]
                hl[d, tr, k] = 0
        ds[d, HST_FIRST] = 0.0
        ds[d, HST_COUNT] = 0.0


@_jit
def profile_learn(means, counts, mad, n, bins, x, valid, lg_mad, alpha):
    """A periodic profile's block update for one metric (the bank's `_block` and `model_kernels.learn_block`): each
    reading `x[i]` against its bin's mean frozen at the block start (clipped at 4 spreads once the profile has 50),
    the robust spread `mad` over readings whose bin was seen before, then each bin's mean and count (`means`,
    `counts`: one entry a bin, updated in place; sums gathered per bin in row order, as `np.bincount`). Returns the
    new (mad, n)."""
    B = x.shape[0]
    nbins = means.shape[0]
    lim = 4.0 * max(1.2533 * mad, 0.05 * 1.2533 * lg_mad)
    dvals = np.empty(B)
    absd = np.empty(B)
    aa = np.empty(B)
    seen_cum = 0.0
    for i in range(B):
        b = bins[i]
        d = x[i] - means[b]
        if lim > 0 and n > 50:
            d = min(max(d, -lim), lim)
        dvals[i] = d
        absd[i] = abs(d)
        seen = valid[i] and counts[b] > 0
        sv = 1.0 if seen else 0.0
        seen_cum += sv
        n_prev = n + seen_cum - sv
        aa[i] = min(max(0.002, 1.0 / (n_prev + 1.0)), 0.5) if seen else 0.0
    if B:
        mad = _ewm_last(mad, absd, aa)
    hits = np.zeros(nbins)
    dsum = np.zeros(nbins)
    xsum = np.zeros(nbins)
    for i in range(B):
        if valid[i]:
            b = bins[i]
            hits[b] += 1.0
            dsum[b] += dvals[i]
            xsum[b] += x[i]
    for b in range(nbins):
        k = hits[b]
        if k > 0:
            sc = counts[b]
            if sc > 0:
                a2 = max(alpha, 1.0 / (sc + 1.0))
                means[b] = means[b] + (1.0 - (1.0 - a2) ** k) * dsum[b] / k
            else:
                means[b] = xsum[b] / k
            counts[b] = sc + k
    return mad, n + seen_cum


@_jit
def robust_level(mean, mad, n, alpha, clip, xf, valid, j, B, xc, ab, mrows, absd):
    """One robust level of metric `j` over a block (the bank's `_block` and `model_kernels.learn_block`): readings
    clipped at `clip` spreads around the block start's mean once it has 10 readings, smoothed at `alpha` (faster while
    young), and its mean absolute deviation from the level before each reading. `xc`, `ab`, `mrows`, `absd`: scratch
    of the block's length. Returns the (mean, mad) after the block."""
    if n == 0:
        for i in range(B):
            if valid[i, j]:
                mean = xf[i, j]
                break
    lim = clip * 1.2533 * mad
    use_lim = n > 10 and lim > 0
    cum = 0.0
    for i in range(B):
        xc[i] = min(max(xf[i, j], mean - lim), mean + lim) if use_lim else xf[i, j]
        v = 1.0 if valid[i, j] else 0.0
        cum = cum + v
        nprev = n + cum - v
        ab[i] = max(alpha, 1.0 / (nprev + 1.0)) if valid[i, j] and nprev >= 1 else 0.0
    if B == 0:
        return mean, mad
    _ewm_rows(mean, xc, ab, mrows)
    for i in range(B):
        absd[i] = abs(xc[i] - (mean if i == 0 else mrows[i - 1]))
    return mrows[B - 1], _ewm_last(mad, absd, ab)


@_jit
def learn_drift(cus, valid, j, B, lg_n, peak, beta, nexc, s0, mu, cap_factor, tail_alpha, rate, ppos, scale, ab, pos,
                capped, apos):
    """The drift CUSUM's learning over a block (the bank's `_block` and `model_kernels.learn_block`): excursions of
    metric `j`'s sum `cus` that ended beyond the tail point `s0` teach its upper tail (`beta`, the mean excess, capped
    at `cap_factor` x the scale; an ongoing drift never ends, so it never teaches itself), then P(S > 0) (`ppos`) and
    the mean positive S (`scale`, capped alike) learn at `rate` (faster while young: `lg_n` readings after the block).
    `ab`, `pos`, `capped`, `apos`: scratch of the block's length. Returns (peak, beta, nexc, ppos, scale)."""
    for i in range(B):
        if not valid[i, j]:
            continue
        c = cus[i, j]
        if c > 0:
            peak = max(peak, c)
            continue
        if peak > s0:
            xcap = min(peak - s0, cap_factor * max(beta, mu))
            ae = max(tail_alpha, 1.0 / (nexc + 1.0))
            beta = beta + ae * (xcap - beta)
            nexc = nexc + 1.0
        peak = 0.0
    cap = cap_factor * scale
    cum = 0.0
    for i in range(B):
        v = 1.0 if valid[i, j] else 0.0
        cum = cum + v
        nprev = max(lg_n - B + cum, 0.0)
        ab[i] = min(max(rate, 1.0 / (nprev + 1.0)), 0.5) if valid[i, j] else 0.0
        p = valid[i, j] and cus[i, j] > 0
        pos[i] = 1.0 if p else 0.0
        capped[i] = min(cus[i, j], cap)
        apos[i] = ab[i] if p else 0.0
    return peak, beta, nexc, _ewm_last(ppos, pos, ab), _ewm_last(scale, capped, apos)


@_jit
def strongest_metric(ev, i, m, valid, hst_i):
    """Row `i`'s fusion (the bank's `_block` and `model_kernels.fuse_alert`): the HST evidence into each metric's
    column (where valid), per metric the two strongest evidences that may confirm each other, and the strongest
    metric. Returns (its evidence, its index; 0.0 and -1 without metrics)."""
    bt = 0.0
    bj = -1
    for j in range(m):
        ev[i, j, _HST] = hst_i * (1.0 if valid[i, j] else 0.0)
        vd = ev[i, j, _DRIFT]
        vf = ev[i, j, _FORECAST]
        fam = max(max(max(ev[i, j, 0], ev[i, j, 1]), vd), vf)
        t1 = -np.inf
        t2 = -np.inf
        for c in (2, 4, 6, 7):
            v = ev[i, j, c]
            if v > t1:
                t2 = t1
                t1 = v
            elif v > t2:
                t2 = v
        top = max(max(fam + t1, t1 + t2), vd + vf)
        if bj < 0 or top > bt:
            bt = top
            bj = j
    return bt, bj


@_jit
def alert_step(e, prev, left, burst, since, e_alert, level, need, alone, rearm, span, soft, penalty, gap, decay,
               e_full, paid, pass_f, suppress_factor, suppress_events, thr):
    """One row of the alert loop (the bank's `_block` and `model_kernels.fuse_alert`): the row's fused evidence `e`
    to its score, with the confirmation (a crossing short of `alone` needs its neighbour row, both at `need`),
    re-arming (`rearm_frac`: an incident going on after its suppression, weaker than its alert, does not re-alert),
    the burst discount and the suppression (`suppress_pass`: on a device faster than level_interval_s, a crossing that
    starts inside the suppression, stronger than the alert that opened it by the factor, is let through). Counters
    keep their callers' types (the model's are ints, the bank's floats). Returns (score, left, burst, since, prev,
    e_alert)."""
    fresh = prev < level  # the row before did not cross: a crossing that starts here
    if e >= alone:
        ei = e
    elif e >= need and prev >= need and max(e, prev) >= level:
        ei = max(e, level)
    else:
        ei = min(e, level - 1e-6)
    prev = e
    if rearm > 0.0 and left <= 0 and since <= span and level <= ei < rearm * e_alert:
        ei = level - 1e-6
    if ei >= level:
        xs = soft * (ei - level - penalty * math.log10(1.0 + burst))
        sp = xs + math.log1p(math.exp(-xs)) if xs > 0 else math.log1p(math.exp(xs))
        s = min(1.0, (level + sp / soft) / e_full)
        if since > gap:
            burst += 1.0
        since = since * 0
    else:
        s = max(ei, 0.0) / e_full
        since += 1
    burst *= decay
    if left > 0:
        if not (pass_f > 0.0 and paid > 0.0 and fresh and level <= ei and pass_f * e_alert <= ei):
            s *= suppress_factor
        left -= 1
    if s >= thr:
        left = suppress_events
        e_alert = ei
    return s, left, burst, since, prev, e_alert


@_jit
def run_round(dev, lo, hi, X, dm, ms, ds, lay, cf, hl, hr, hcol, hkind, tthr, fc_item, pred, scores, best):
    """One block (rows `lo[a]:hi[a]` of `X`, last column the timestamp) of each device `dev[a]`: scored against the
    state at the block start, then learned; writes each row's score and best metric column (-1: none)."""
    for a in range(dev.shape[0]):
        _block(a, dev[a], lo[a], hi[a], X, dm, ms, ds, lay, cf, hl, hr, hcol, hkind, tthr, fc_item, pred, scores, best)


@_jit
def _block(a, d, lo, hi, X, dm, ms, ds, lay, cf, hl, hr, hcol, hkind, tthr, fc_item, pred, scores, best):
    B = hi - lo
    tcol = X.shape[1] - 1
    m = 0
    while m < dm.shape[1] and dm[d, m] >= 0:
        m += 1
    ts = np.empty(B)
    for i in range(B):
        ts[i] = X[lo + i, tcol]
    x = X[lo:hi]
    w = int(cf[F_SHIFT_W])
    w1 = w - 1
    lags = int(cf[F_LAGS])
    sb = int(cf[F_SB])
    wb = int(cf[F_WB])
    nb = int(cf[F_CBINS])
    use_weekly = cf[F_USE_WEEKLY] > 0
    use_fc = cf[F_USE_FC] > 0
    rec0, lag0, sm0, sc0, wm0, wc0 = lay[L_REC], lay[L_LAG], lay[L_SM], lay[L_SC], lay[L_WM], lay[L_WC]
    ct0, cn0, cc0 = lay[L_CT], lay[L_CN], lay[L_CC]

    valid = np.zeros((B, m), np.bool_)
    xf = np.zeros((B, m))
    zlc = np.zeros((B, m))
    raw = np.zeros((B, m, _CAL))
    avail = np.zeros((m, _CAL), np.bool_)
    cu_p = np.zeros((B, m))
    lvn0 = np.zeros(m)  # readings each metric's level had at the block's start
    cu_n = np.zeros((B, m))
    cus = np.zeros((B, m))
    ev = np.zeros((B, m, _NC))
    feats = np.zeros((m, B, 3))
    same = np.zeros((B, m), np.bool_)
    run = np.zeros((B, m))
    xn_all = np.zeros((B, m))
    errs = np.zeros((B, m))
    bins = np.empty(B, np.int64)
    wbins = np.empty(B, np.int64)
    spatial = np.zeros(B, np.bool_)
    sp_tol = cf[F_SP_TOL]
    for i in range(B):
        bins[i] = int((ts[i] % 86400.0) / 86400.0 * sb) % sb
        wbins[i] = int((ts[i] % _WEEK) / _WEEK * wb) % wb if wb > 0 else 0
    col = np.empty(B)
    col2 = np.empty(B)
    for j in range(m):
        s = dm[d, j]
        lv_mean, lv_mad, lv_n = ms[s, LV_MEAN], ms[s, LV_MAD], ms[s, LV_N]
        lvn0[j] = lv_n
        lg_mean, lg_mad, lg_n = ms[s, LG_MEAN], ms[s, LG_MAD], ms[s, LG_N]
        lg_scale = 1.2533 * lg_mad
        s_floor = 0.05 * lg_scale
        sd = max(max(1.2533 * lv_mad, s_floor), 1e-9)
        # the ramp level speaks for `level` where it has predicted the metric `ramp_margin` times better lately
        use_r = cf[F_RAMP_TREND] > 0 and lv_n >= 2 and ms[s, RL_MAD] * cf[F_RAMP_MARGIN] < lv_mad
        rl_sd = max(max(1.2533 * ms[s, RL_MAD], 0.05 * min(lg_scale, 1.2533 * ms[s, DF_MAD])), 1e-9)
        for i in range(B):
            v = x[i, j]
            valid[i, j] = not math.isnan(v)
            xf[i, j] = v if valid[i, j] else 0.0
        zl = np.zeros(B)
        for i in range(B):
            z = (xf[i, j] - lv_mean) / sd if lv_n >= 2 else 0.0
            z = min(max(z, -1e6), 1e6) if valid[i, j] else 0.0
            zl[i] = z
            zlc[i, j] = min(max(z, -10.0), 10.0)
            raw[i, j, 0] = abs(z)
            if use_r and valid[i, j]:
                raw[i, j, 0] = min(abs(xf[i, j] - (ms[s, RL_MEAN] + ms[s, RL_SLOPE] * (i + 1))) / rl_sd, 1e6)
        # spatial: outside the range seen so far by more than sp_tol of it
        width = ms[s, SP_HI] - ms[s, SP_LO]
        if sp_tol > 0 and width > 0:
            tol = sp_tol * width
            for i in range(B):
                if valid[i, j] and (xf[i, j] > ms[s, SP_HI] + tol or xf[i, j] < ms[s, SP_LO] - tol):
                    spatial[i] = True
        # shift: mean of the last w clipped level z-scores (as differences of one running sum)
        cs = np.zeros(w1 + B + 1)
        for k in range(w1 + B):
            v = ms[s, rec0 + k] if k < w1 else zlc[k - w1, j]
            cs[k + 1] = cs[k] + v if k else v
        for i in range(B):
            zs = (cs[w + i] - cs[i]) / w
            raw[i, j, 1] = abs(zs) * math.sqrt(w) * 0.5
        # drift
        for i in range(B):
            zd = min(max((xf[i, j] - lg_mean) / sd, -cf[F_DRIFT_CLIP]), cf[F_DRIFT_CLIP]) if valid[i, j] and lg_n >= 2 else 0.0
            kv = cf[F_DRIFT_K] * (1.0 if valid[i, j] else 0.0)
            col[i] = zd - kv
            col2[i] = -zd - kv
        _cusum(ms[s, CU_POS], col, cu_p[:, j])
        _cusum(ms[s, CU_NEG], col2, cu_n[:, j])
        ok = lg_n >= cf[F_CWARM] and ms[s, CU_SCALE] > 0
        e0 = -math.log10(max(ms[s, CU_PPOS], 1e-6))
        mu = max(ms[s, CU_SCALE], 1e-12)
        te = cf[F_DRIFT_TE]
        s0 = (te - e0) * mu * _LN10
        beta = max(ms[s, CU_BETA], mu)
        # an excursion beyond the tail point is also scored against the scale it started under, until the device
        # alerts (the scale learns the excursion row by row: a young model's learns a slow climb away)
        anc = ms[s, CU_ANC]
        if anc > 0 and ds[d, SUPPRESS] > 0:
            anc = -1.0
        # only an excursion that crosses the tail point once the slow baseline is an EWMA (not a young running mean)
        anc_ok = lg_n * cf[F_LONG_ALPHA] >= 1.0
        p_prev, n_prev = ms[s, CU_POS], ms[s, CU_NEG]
        side = leading_side(p_prev, n_prev, 0)
        for i in range(B):
            c = max(cu_p[i, j], cu_n[i, j])
            cus[i, j] = c
            e = e0 + c / (mu * _LN10)
            if ms[s, CU_NEXC] > 0:
                e = min(e, te + (c - s0) / (beta * _LN10))
            if valid[i, j]:
                anc, ea, side = anchor_step(cu_p[i, j], cu_n[i, j], p_prev, n_prev, side, anc, s0, mu, anc_ok, e0, te,
                                            ms[s, CU_NEXC], ms[s, CU_BETA])
                e = max(e, ea)
                p_prev, n_prev = cu_p[i, j], cu_n[i, j]
            ev[i, j, _DRIFT] = max(e, 0.0) if ok and c > 0 and valid[i, j] else 0.0
        if B:
            ms[s, CU_ANC] = anc
        # seasonal
        mature = True
        for b in range(sb):
            if not ms[s, sc0 + b] >= 3:
                mature = False
                break
        ss = max(max(1.2533 * ms[s, S_MAD], s_floor), 1e-9)
        zseas = np.zeros(B)
        for i in range(B):
            if mature and valid[i, j]:
                zseas[i] = (xf[i, j] - ms[s, sm0 + bins[i]]) / ss
            raw[i, j, 2] = abs(zseas[i])
        avail[j, 0] = avail[j, 1] = True
        avail[j, 2] = mature
        if use_weekly:
            wk_ok = ts[0] - ms[s, T_FIRST] >= cf[F_WMINAGE] if B else False
            ws = max(max(1.2533 * ms[s, W_MAD], s_floor), 1e-9)
            for i in range(B):
                if ms[s, wc0 + wbins[i]] >= 2 and wk_ok and valid[i, j]:
                    raw[i, j, 4] = abs((xf[i, j] - ms[s, wm0 + wbins[i]]) / ws)
            avail[j, 4] = wk_ok
        # forecast (the predictions come from the forecaster objects, `pred` rows from `fc_item[a, j]`)
        zf = np.zeros(B)
        if use_fc and B:
            xn = _xn_col(ms, s, x, j, B)
            for i in range(B):
                xn_all[i, j] = xn[i]
            if lg_n > lags:
                off = fc_item[a, j]
                scale = max(ms[s, FC_ERR] * 1.2533, 0.05)
                for i in range(B):
                    err = xn[i] - pred[off + i] if valid[i, j] else 0.0
                    errs[i, j] = err
                    zf[i] = err / scale
                    raw[i, j, 3] = abs(zf[i])
                avail[j, 3] = True
        # stuck
        q = min(max(ms[s, REPEAT], 0.01), 0.999)
        lq = math.log10(q)
        moving = lv_mad > 1e-9 * max(1.0, abs(lv_mean))
        last_reset = 0
        for i in range(B):
            prev = ms[s, LAST] if i == 0 else x[i - 1, j]
            sm_ = x[i, j] == prev and valid[i, j]
            same[i, j] = sm_
            last_reset = max(last_reset, 0 if sm_ else i + 1)
            r = ms[s, RUN] + (i + 1) if last_reset == 0 else float(i + 1 - last_reset)
            run[i, j] = r
            st = -r * lq - 3.0 if sm_ and r >= cf[F_STUCK_MIN] and moving else 0.0
            ev[i, j, _STUCK] = max(st, 0.0)
        for i in range(B):
            for c in range(_CAL):
                ev[i, j, c] = _evidence(ms, s, lay, cf, raw[i, j, c], c) * (1.0 if avail[j, c] else 0.0)
            if not valid[i, j]:
                for c in range(_HST):
                    ev[i, j, c] *= 0.0
            feats[j, i, 0] = 0.5 + 0.5 * math.tanh(zl[i] * 0.25)
            feats[j, i, 1] = 0.5 + 0.5 * math.tanh(zseas[i] * 0.25)
            feats[j, i, 2] = 0.5 + 0.5 * math.tanh(zf[i] * 0.25)

    # HST: evidence per row, held between the strided evaluations; learns as it goes
    hst_ev = np.zeros(B)
    if cf[F_USE_HST] > 0 and m > 0:
        every = int(cf[F_HST_EVERY])
        height = int(cf[F_HST_H])
        window = cf[F_HST_W]
        size_limit = 0.1 * window
        max_score = cf[F_HST_T] * window * (2 ** (height + 1) - 1)
        last = ds[d, HST_LAST]
        n0 = int(ds[d, N_ROWS])
        fr = np.zeros((m, 3))
        for i in range(B):
            if (n0 + i) % every == 0:
                anyv = False
                for j in range(m):
                    anyv = anyv or valid[i, j]
                if anyv:
                    tid = int(ds[d, HST_TID])
                    for j in range(m):
                        for k in range(3):
                            fr[j, k] = feats[j, i, k]
                    if ds[d, HST_FIRST] > 0:
                        r = 0.0
                    else:
                        sc = 0.0
                        for tr in range(hl.shape[1]):
                            sc += _hst_walk_score(hl, hr, hcol, hkind, tthr, d, tid, fr, valid[i], height, size_limit, tr)
                        r = (1 - sc / max_score) * 10.0
                    last = _gt_evidence(ds, d, r, cf[F_HC_WARM])
                    _gt_update(ds, d, r, cf[F_HC_ALPHA], cf[F_HC_WARM])
                    _hst_learn(hl, hr, hcol, hkind, tthr, ds, d, tid, fr, valid[i], height, window)
            hst_ev[i] = last
        ds[d, HST_LAST] = last

    # fusion (`strongest_metric`, as `model_kernels.fuse_alert`): per row the strongest metric
    e_row = np.zeros(B)
    best_row = np.full(B, -1, np.int64)
    for i in range(B):
        e_row[i], best_row[i] = strongest_metric(ev, i, m, valid, hst_ev[i])
    for i in range(B):
        if spatial[i]:
            e_row[i] = max(e_row[i], cf[F_SP_E])
    iv = ds[d, SIL_IV] if ds[d, SIL_N] >= 2 else 0.0
    paid = 0.0  # `model._run_block`: decades a faster device already pays per reading
    if iv > 0.0:
        add = math.log10(iv / cf[F_LEVEL_IV])
        paid = max(-add, 0.0)
        for i in range(B):
            e_row[i] = e_row[i] + add
    thr = cf[F_MINTHR]
    e_full = cf[F_EFULL]
    level = thr * e_full
    k_soft, beta = cf[F_BURST_SOFT], cf[F_BURST_PEN]
    gap, dec = cf[F_BURST_GAP], cf[F_BURST_DEC]
    left, burst, since = ds[d, SUPPRESS], ds[d, BURST], ds[d, SINCE]
    need, prev = cf[F_CONF_FRAC] * level, ds[d, E_PREV]
    alone = level + max(cf[F_CONF_EXT] - paid, 0.0)
    rearm, e_alert, span = cf[F_REARM], ds[d, E_ALERT], cf[F_SUPP_EV]
    pass_f = cf[F_SUPP_PASS]
    for i in range(B):
        sc, left, burst, since, prev, e_alert = alert_step(e_row[i], prev, left, burst, since, e_alert, level, need,
                                                           alone, rearm, span, k_soft, beta, gap, dec, e_full, paid,
                                                           pass_f, cf[F_SUPP_F], cf[F_SUPP_EV], thr)
        scores[lo + i] = sc
        best[lo + i] = best_row[i]

    # ---------------------------------------------------------------- learn the block
    vf = np.zeros(B)
    ab = np.zeros(B)
    xc = np.zeros(B)
    mrows = np.zeros(B)
    absd = np.zeros(B)
    for j in range(m):
        s = dm[d, j]
        nvalid = 0.0
        for i in range(B):
            vf[i] = 1.0 if valid[i, j] else 0.0
            nvalid += vf[i]
        for pre in range(2):
            mc, dc, ncol = (LV_MEAN, LV_MAD, LV_N) if pre == 0 else (LG_MEAN, LG_MAD, LG_N)
            alpha = cf[F_LEVEL_ALPHA] if pre == 0 else cf[F_LONG_ALPHA]
            clip = 4.0 if pre == 0 else 6.0
            n = ms[s, ncol]
            ms[s, mc], ms[s, dc] = robust_level(ms[s, mc], ms[s, dc], n, alpha, clip, xf, valid, j, B, xc, ab, mrows,
                                                absd)
            ms[s, ncol] = n + nvalid
        if w1 > 0:
            for k in range(w1):
                src = k + B  # index in [recent; zlc]
                ms[s, rec0 + k] = ms[s, rec0 + src] if src < w1 else zlc[src - w1, j]
        if B:
            ms[s, CU_POS] = cu_p[B - 1, j]
            ms[s, CU_NEG] = cu_n[B - 1, j]
            mu = max(ms[s, CU_SCALE], 1e-12)
            s0 = (cf[F_DRIFT_TE] + math.log10(max(ms[s, CU_PPOS], 1e-6))) * mu * _LN10
            (ms[s, CU_PEAK], ms[s, CU_BETA], ms[s, CU_NEXC], ms[s, CU_PPOS],
             ms[s, CU_SCALE]) = learn_drift(cus, valid, j, B, ms[s, LG_N], ms[s, CU_PEAK], ms[s, CU_BETA],
                                            ms[s, CU_NEXC], s0, mu, cf[F_DRIFT_CAP], cf[F_DRIFT_TA],
                                            math.log(2.0) / cf[F_DRIFT_HL], ms[s, CU_PPOS], ms[s, CU_SCALE], ab,
                                            np.zeros(B), np.zeros(B), np.zeros(B))
        for i in range(B):
            if valid[i, j]:
                v = xf[i, j]
                if not v >= ms[s, SP_LO]:  # also when SP_LO is NaN
                    ms[s, SP_LO] = v
                if not v <= ms[s, SP_HI]:
                    ms[s, SP_HI] = v
        ms[s, S_MAD], ms[s, S_N] = profile_learn(ms[s, sm0:sm0 + sb], ms[s, sc0:sc0 + sb], ms[s, S_MAD], ms[s, S_N],
                                                 bins, xf[:, j], valid[:, j], ms[s, LG_MAD], cf[F_SALPHA])
        if use_weekly:
            ms[s, W_MAD], ms[s, W_N] = profile_learn(ms[s, wm0:wm0 + wb], ms[s, wc0:wc0 + wb], ms[s, W_MAD],
                                                     ms[s, W_N], wbins, xf[:, j], valid[:, j], ms[s, LG_MAD],
                                                     cf[F_WALPHA])
        has = nvalid > 0
        if B and has and math.isnan(ms[s, T_FIRST]):
            for i in range(B):
                if valid[i, j]:
                    ms[s, T_FIRST] = ts[i]
                    break
        if use_fc and B:
            act_j = ms[s, LG_N] - nvalid > lags and has  # eligible at the block start, and learned from
            if act_j:
                fe = ms[s, FC_ERR]
                lim_e = 4.0 * fe * 1.2533 + 0.1
                for i in range(B):
                    ncum = ms[s, LG_N] - B + i
                    ab[i] = min(max(0.01, 1.0 / (max(ncum, 1.0) + 1.0)), 0.5) if valid[i, j] else 0.0
                    absd[i] = min(abs(errs[i, j]), lim_e)
                ms[s, FC_ERR] = _ewm_last(fe, absd, ab)
            seq = np.empty(lags + B)
            for k in range(lags):
                seq[k] = ms[s, lag0 + k]
            for i in range(B):
                v = xn_all[i, j]
                seq[lags + i] = seq[lags + i - 1] if math.isnan(v) else v
            for k in range(lags):
                v = seq[B + k]
                ms[s, lag0 + k] = 0.0 if math.isnan(v) else v
        if cf[F_RAMP_TREND] > 0 and B:
            ms[s, RL_MEAN], ms[s, RL_SLOPE], ms[s, RL_MAD] = ramp_learn(
                ms[s, RL_MEAN], ms[s, RL_SLOPE], ms[s, RL_MAD], lvn0[j], xf[:, j], valid[:, j], cf[F_LEVEL_ALPHA],
                cf[F_RAMP_TREND])
            ms[s, DF_MAD] = diff_learn(ms[s, LAST], ms[s, DF_MAD], lvn0[j], xf[:, j], valid[:, j], cf[F_LONG_ALPHA])
        # stuck
        if has:
            li = B - 1
            while not valid[li, j]:
                li -= 1
            ms[s, LAST] = x[li, j]
            ms[s, RUN] = run[li, j] if same[li, j] else 0.0
        for i in range(B):
            absd[i] = 1.0 if same[i, j] else 0.0
            ab[i] = 0.01 * vf[i]
        if B:
            ms[s, REPEAT] = _ewm_last(ms[s, REPEAT], absd, ab)
    # calibrators: decayed histograms (newer rows weigh more), sums gathered per bin before they are added
    wts = np.empty(B)
    cw = ds[d, C_WEIGHT]
    for i in range(B):
        wts[i] = cw * cf[F_CDECAY] ** float(i + 1)  # pow, as NumPy (not repeated products)
    acc = np.zeros(nb)
    for j in range(m):
        s = dm[d, j]
        for c in range(_CAL):
            if not avail[j, c] or lvn0[j] < cf[F_CWARM]:
                continue
            touched = False
            tsum = 0.0
            cnt = 0.0
            for i in range(B):
                if valid[i, j]:
                    u = math.log1p(max(raw[i, j, c], 0.0))
                    b = min(int(u * cf[F_CBPU]), nb - 1)
                    acc[b] += wts[i]
                    tsum = tsum + wts[i] if touched else wts[i]
                    touched = True
                    cnt += 1.0
            if touched:
                base = cc0 + c * nb
                for b in range(nb):
                    if acc[b] != 0.0:
                        ms[s, base + b] += acc[b]
                        acc[b] = 0.0
                ms[s, ct0 + c] += tsum
                ms[s, cn0 + c] += cnt
    if B:
        ds[d, C_WEIGHT] = wts[B - 1]
    if ds[d, C_WEIGHT] > 1e50:
        sc_ = 1.0 / ds[d, C_WEIGHT]
        for j in range(m):
            s = dm[d, j]
            for k in range(_CAL * nb):
                ms[s, cc0 + k] *= sc_
            for c in range(_CAL):
                ms[s, ct0 + c] *= sc_
        ds[d, C_WEIGHT] = 1.0
    ds[d, SUPPRESS], ds[d, BURST], ds[d, SINCE], ds[d, E_PREV] = left, burst, since, prev
    ds[d, E_ALERT] = e_alert
    # silence detector (`detectors.SilenceDetector.observe`)
    for i in range(B):
        t = ts[i]
        lt = ds[d, SIL_LAST]
        if not math.isnan(lt):
            dt = t - lt
            if dt <= 0:
                continue
            if ds[d, SIL_N] == 0:
                ds[d, SIL_IV] = dt
            else:
                dt = min(dt, 3.0 * ds[d, SIL_IV])
                ds[d, SIL_IV] += cf[F_SIL_ALPHA] * (dt - ds[d, SIL_IV])
            ds[d, SIL_N] += 1
        if math.isnan(lt) or t > lt:
            ds[d, SIL_LAST] = t
    ds[d, N_ROWS] += B
