"""`DeviceAnomalyModel`'s block arithmetic in a few compiled calls: the raw scores (`score_block`), the forecasters'
errors (`forecast_scores`), the calibrators' evidence (`evidence_args`, `evidence`), fusion and the alert loop
(`fuse_alert`), and learning (`learn_block`: levels, drift calibration and tail, range, time-of-day and hour-of-week
profiles, forecast error scale and lag buffer, ramp level, stuck detector, calibrators).

Why: done in NumPy, a block took ~200 calls on arrays of a few elements; their overhead, not their arithmetic, was
the cost (docs/performance.md, issue 19). The loops below do the NumPy code's arithmetic in its order (running products
and sums row by row, histogram sums gathered per bin before they are added, the same operands in the same
association; numba without fastmath does not fuse or reorder), so scores, alerts and state are the NumPy code's, bit
for bit. NumPy keeps what its own SIMD code computes (tanh, sin/cos, and on AVX512 machines log10/log1p): those
values come in as arguments. Here only `+ - * /`, min/max, `pow` (profiles) and, in the alert loop, libm's
log10/exp/log1p (as Python's `math`) run. Learning updates the state arrays in place.

What the bank's kernel does alike is shared with it from `kernels.py` (the robust levels, the profiles, Holt's ramp,
the drift's anchor and learning, fusion, the alert step). numba checks a function's cache (`cache=True`) against its
own file only, so the `kernels.py` functions compiled into these would stay stale after a change there:
`_tie_cache_to_kernels` empties these functions' cache when it is older than `kernels.py`.
"""

from __future__ import annotations

import math
import os

import numba
import numpy as np

from online_models.anomaly import kernels
from online_models.anomaly.kernels import (_LN10, _ewm_last, _jit, alert_step, anchor_step, diff_learn,
                                           leading_side, learn_drift, profile_learn, ramp_learn,
                                           robust_level, strongest_metric)


@_jit
def learn_block(ts, x, xf, valid, lvn0, lv_mean, lv_mad, lv_n, lg_mean, lg_mad, lg_n, level_alpha, long_alpha,
                cus, tail_s0, mu, cu_ppos, cu_scale, cu_peak, cu_beta, cu_nexc, drift_rate, drift_cap, tail_alpha,
                sp_lo, sp_hi, bins, s_means, s_counts, s_mad, s_n, s_alpha,
                use_weekly, wbins, w_means, w_counts, w_mad, w_n, w_alpha, t_first,
                use_fc, fc_act, errs, fc_err, xn, lagbuf, ramp_trend, rl_mean, rl_slope, rl_mad, df_mad,
                same, run_rows, last, run, repeat_rate,
                cal_bins, avail, cal_warmup, wts, c_counts, c_total, c_n):
    """`model.DeviceAnomalyModel._learn_block` after the forecasters' own learning (`fc_act`: the metrics whose
    forecaster learned, `errs` their errors). `tail_s0`, `mu`: the drift tail's point and scale at the block start
    (as scored); `cal_bins`: each raw score's calibrator bin; `wts`: each row's calibrator weight."""
    B, M = x.shape
    ab = np.empty(B)
    xc = np.empty(B)
    mrows = np.empty(B)
    absd = np.empty(B)
    scratch = np.empty(B)
    for j in range(M):
        nvalid = 0.0
        for i in range(B):
            if valid[i, j]:
                nvalid += 1.0
        has = nvalid > 0
        # robust levels: fast, then long (clip limits frozen for the block)
        for pre in range(2):
            if pre == 0:
                mean, mad, n, alpha, clip = lv_mean[j], lv_mad[j], lv_n[j], level_alpha, 4.0
            else:
                mean, mad, n, alpha, clip = lg_mean[j], lg_mad[j], lg_n[j], long_alpha, 6.0
            mean, mad = robust_level(mean, mad, n, alpha, clip, xf, valid, j, B, xc, ab, mrows, absd)
            if pre == 0:
                lv_mean[j], lv_mad[j], lv_n[j] = mean, mad, n + nvalid
            else:
                lg_mean[j], lg_mad[j], lg_n[j] = mean, mad, n + nvalid
        # drift: excursions that ended beyond the tail point teach its mean excess (`_learn_excursions`)
        # and its calibration: P(S > 0) and the mean positive S (capped at drift_cap x the scale)
        cu_peak[j], cu_beta[j], cu_nexc[j], cu_ppos[j], cu_scale[j] = learn_drift(
            cus, valid, j, B, lg_n[j], cu_peak[j], cu_beta[j], cu_nexc[j], tail_s0[j], mu[j], drift_cap, tail_alpha,
            drift_rate, cu_ppos[j], cu_scale[j], ab, absd, xc, mrows)
        # range of the readings
        if has:
            lo, hi = np.inf, -np.inf
            for i in range(B):
                if valid[i, j]:
                    lo = min(lo, xf[i, j])
                    hi = max(hi, xf[i, j])
            sp_lo[j] = lo if math.isnan(sp_lo[j]) else min(sp_lo[j], lo)
            sp_hi[j] = hi if math.isnan(sp_hi[j]) else max(sp_hi[j], hi)
        # seasonal (time of day) and weekly (hour of week) profiles
        s_mad[j], s_n[j] = profile_learn(s_means[:, j], s_counts[:, j], s_mad[j], s_n[j], bins, xf[:, j], valid[:, j],
                                         lg_mad[j], s_alpha)
        if use_weekly:
            w_mad[j], w_n[j] = profile_learn(w_means[:, j], w_counts[:, j], w_mad[j], w_n[j], wbins, xf[:, j],
                                             valid[:, j], lg_mad[j], w_alpha)
        if has and math.isnan(t_first[j]):
            for i in range(B):
                if valid[i, j]:
                    t_first[j] = ts[i]
                    break
        # forecaster: error scale, lag buffer
        if use_fc:
            if fc_act[j]:
                fe = fc_err[j]
                lim_e = 4.0 * fe * 1.2533 + 0.1
                for i in range(B):
                    ncum = lg_n[j] - B + i
                    ab[i] = min(max(0.01, 1.0 / (max(ncum, 1.0) + 1.0)), 0.5) if valid[i, j] else 0.0
                    absd[i] = min(abs(errs[i, j]), lim_e)
                fc_err[j] = _ewm_last(fe, absd, ab)
            lags = lagbuf.shape[0]
            prev = lagbuf[lags - 1, j]
            for i in range(B):  # the last `lags` values, a missing one carrying the one before
                v = xn[i, j] if valid[i, j] else np.nan
                scratch[i] = prev if math.isnan(v) else v
                prev = scratch[i]
            for k in range(lags):
                src = k + B  # index in [lagbuf; new values]
                v = lagbuf[src, j] if src < lags else scratch[src - lags]
                lagbuf[k, j] = 0.0 if math.isnan(v) else v
        if ramp_trend > 0:
            rl_mean[j], rl_slope[j], rl_mad[j] = ramp_learn(rl_mean[j], rl_slope[j], rl_mad[j], lvn0[j], xf[:, j],
                                                            valid[:, j], level_alpha, ramp_trend)
            df_mad[j] = diff_learn(last[j], df_mad[j], lvn0[j], xf[:, j], valid[:, j], long_alpha)
        # stuck detector
        if has:
            li = B - 1
            while not valid[li, j]:
                li -= 1
            last[j] = x[li, j]
            run[j] = run_rows[li, j] if same[li, j] else 0.0
        for i in range(B):
            absd[i] = 1.0 if same[i, j] else 0.0
            ab[i] = 0.01 * (1.0 if valid[i, j] else 0.0)
        repeat_rate[j] = _ewm_last(repeat_rate[j], absd, ab)
    # calibrators: decayed histograms (newer rows weigh more), sums gathered per bin before they are added
    nb = c_counts.shape[2]
    acc = np.zeros(nb)
    for j in range(M):
        has = False
        for i in range(B):
            has = has or valid[i, j]
        if not has or lvn0[j] < cal_warmup:
            continue
        for c in range(c_counts.shape[1]):
            if not avail[j, c]:
                continue
            tsum = 0.0
            cnt = 0.0
            first = True
            for i in range(B):
                if valid[i, j]:
                    acc[cal_bins[i, j, c]] += wts[i]
                    tsum = wts[i] if first else tsum + wts[i]
                    first = False
                    cnt += 1.0
            for b in range(nb):
                if acc[b] != 0.0:
                    c_counts[j, c, b] += acc[b]
                    acc[b] = 0.0
            c_total[j, c] += tsum
            c_n[j, c] += cnt


@_jit
def score_block(ts, x, lv_mean, lv_mad, lv_n, lg_mean, lg_mad, lg_n, recent, shift_w, ramp_trend, ramp_margin, rl_mean,
                rl_slope, rl_mad, df_mad, drift_k, drift_clip, cu_pos0, cu_neg0, cu_scale, cu_beta, cu_nexc, cu_anc,
                suppressing, e0, tail_e, long_alpha, calib_warmup, s_means, s_counts, s_mad, use_weekly, w_means,
                w_counts, w_mad, t_first, weekly_min_age, weekly_bins, use_fc, lagbuf, sin_t, cos_t, last, run0, lq,
                stuck_min_run, sp_lo, sp_hi, sp_tol, cu_pos, cu_neg, anc):
    """`model.DeviceAnomalyModel._score_block` up to the forecasters' predictions and the calibrators: each row's
    raw scores (level, shift, seasonal, weekly), drift evidence, stuck evidence, normalised values and forecaster
    inputs, against the state at the block start. `e0` (-log10 of P(S > 0)) and `lq` (log10 of the repeat rate)
    come in from NumPy, as do the time of day's `sin_t`, `cos_t`. Writes the CUSUMs into `cu_pos`, `cu_neg` (rows x
    metrics) and the drift anchors into `anc` (a copy of `cu_anc`): these become state, so they are NumPy's own
    arrays (an array made here pickles its dtype as a second object). Returns the other arrays `_score_block` hands
    on."""
    B, M = x.shape
    nc = 5
    valid = np.empty((B, M), np.bool_)
    xf = np.empty((B, M))
    zl = np.zeros((B, M))
    zlc = np.zeros((B, M))
    raw = np.zeros((B, M, nc))
    avail = np.zeros((M, nc), np.bool_)
    cus = np.empty((B, M))
    e_drift = np.zeros((B, M))
    tail_s0 = np.empty(M)
    mu = np.empty(M)
    zseas = np.zeros((B, M))
    xn = np.empty((B, M))
    lags = lagbuf.shape[0]
    xin = np.zeros((M, B, lags + 2), np.float32)
    same = np.zeros((B, M), np.bool_)
    run = np.empty((B, M))
    stuck = np.zeros((B, M))
    spatial = np.zeros(B, np.bool_)
    sb = s_means.shape[0]
    bins = np.empty(B, np.int64)
    wbins = np.empty(B, np.int64)
    for i in range(B):
        bins[i] = int((ts[i] % 86400.0) / 86400.0 * sb) % sb
        wbins[i] = int((ts[i] % 604800.0) / 604800.0 * weekly_bins) % weekly_bins
    w1 = recent.shape[0]
    cs = np.empty(w1 + B + 1)
    dp = np.empty(B)
    dn = np.empty(B)
    seq = np.empty(lags + B)
    rt = math.sqrt(shift_w)
    for j in range(M):
        lg_scale = 1.2533 * lg_mad[j]
        s_floor = 0.05 * lg_scale
        sd = max(max(1.2533 * lv_mad[j], s_floor), 1e-9)
        for i in range(B):
            v = x[i, j]
            valid[i, j] = not math.isnan(v)
            xf[i, j] = v if valid[i, j] else 0.0
        # level: the value against the fast level (or the ramp level, where that has predicted ramp_margin x better)
        use_r = ramp_trend > 0 and lv_n[j] >= 2 and rl_mad[j] * ramp_margin < lv_mad[j]
        rl_sd = max(max(1.2533 * rl_mad[j], 0.05 * min(lg_scale, 1.2533 * df_mad[j])), 1e-9)
        for i in range(B):
            z = (xf[i, j] - lv_mean[j]) / sd if lv_n[j] >= 2 else 0.0
            z = min(max(z, -1e6), 1e6) if valid[i, j] else 0.0
            zl[i, j] = z
            zlc[i, j] = min(max(z, -10.0), 10.0)
            raw[i, j, 0] = abs(z)
            if use_r and valid[i, j]:
                raw[i, j, 0] = min(abs(xf[i, j] - (rl_mean[j] + rl_slope[j] * float(i + 1))) / rl_sd, 1e6)
        # shift: mean of the last shift_w clipped level z-scores (differences of one running sum from 0)
        cs[0] = 0.0
        for k in range(w1 + B):
            cs[k + 1] = cs[k] + (recent[k, j] if k < w1 else zlc[k - w1, j])
        for i in range(B):
            zs = (cs[shift_w + i] - cs[i]) / shift_w
            raw[i, j, 1] = abs(zs) * rt * 0.5
        # drift: two-sided CUSUM against the slow baseline (model._cusum's closed form, row by row)
        for i in range(B):
            zd = 0.0
            if valid[i, j] and lg_n[j] >= 2:
                zd = min(max((xf[i, j] - lg_mean[j]) / sd, -drift_clip), drift_clip)
            kv = drift_k * (1.0 if valid[i, j] else 0.0)
            dp[i] = zd - kv
            dn[i] = -zd - kv
        cp = 0.0
        cn = 0.0
        mp = 0.0
        mn = 0.0
        for i in range(B):
            cp = cp + dp[i] if i else dp[i]
            cn = cn + dn[i] if i else dn[i]
            mp = min(mp, cp) if i else cp
            mn = min(mn, cn) if i else cn
            cu_pos[i, j] = cp - min(mp, -cu_pos0[j])
            cu_neg[i, j] = cn - min(mn, -cu_neg0[j])
            cus[i, j] = max(cu_pos[i, j], cu_neg[i, j])
        ok = lg_n[j] >= calib_warmup and cu_scale[j] > 0
        muj = max(cu_scale[j], 1e-12)
        s0 = (tail_e - e0[j]) * muj * _LN10
        beta = max(cu_beta[j], muj)
        mu[j] = muj
        tail_s0[j] = s0
        for i in range(B):
            e = e0[j] + cus[i, j] / (muj * _LN10)
            if cu_nexc[j] > 0:
                e = min(e, tail_e + (cus[i, j] - s0) / (beta * _LN10))
            e_drift[i, j] = e
        a = -1.0 if cu_anc[j] > 0 and suppressing else cu_anc[j]
        anc_ok = lg_n[j] * long_alpha >= 1.0
        p_prev, n_prev = cu_pos0[j], cu_neg0[j]
        side = leading_side(p_prev, n_prev, 0)
        for i in range(B):
            if not valid[i, j]:
                continue
            p, n = cu_pos[i, j], cu_neg[i, j]
            a, ea, side = anchor_step(p, n, p_prev, n_prev, side, a, s0, muj, anc_ok, e0[j], tail_e, cu_nexc[j],
                                      cu_beta[j])
            e_drift[i, j] = max(e_drift[i, j], ea)
            p_prev, n_prev = p, n
        anc[j] = a
        for i in range(B):
            e_drift[i, j] = max(e_drift[i, j], 0.0) if ok and cus[i, j] > 0 and valid[i, j] else 0.0
        # seasonal (time of day)
        mature = sb > 0
        for b in range(sb):
            if not s_counts[b, j] >= 3:
                mature = False
                break
        ss = max(max(1.2533 * s_mad[j], s_floor), 1e-9)
        for i in range(B):
            if mature and valid[i, j]:
                zseas[i, j] = (xf[i, j] - s_means[bins[i], j]) / ss
            raw[i, j, 2] = abs(zseas[i, j])
        avail[j, 0] = avail[j, 1] = True
        avail[j, 2] = mature
        # weekly (hour of week), once the metric has weekly_min_age seconds of history
        if use_weekly:
            wk_ok = ts[0] - t_first[j] >= weekly_min_age
            ws = max(max(1.2533 * w_mad[j], s_floor), 1e-9)
            for i in range(B):
                if w_counts[wbins[i], j] >= 2 and wk_ok and valid[i, j]:
                    raw[i, j, 4] = abs((xf[i, j] - w_means[wbins[i], j]) / ws)
            avail[j, 4] = wk_ok
        # normalised values (against the long level) and the forecaster's inputs: lags + time of day
        lgs = lg_scale if lg_scale > 1e-9 else 1.0
        for i in range(B):
            xn[i, j] = min(max((xf[i, j] - lg_mean[j]) / lgs, -10.0), 10.0) if valid[i, j] else np.nan
        if use_fc and lg_n[j] > lags:
            for k in range(lags):
                seq[k] = lagbuf[k, j]
            for i in range(B):
                v = xn[i, j]
                seq[lags + i] = seq[lags + i - 1] if math.isnan(v) else v
            for i in range(B):
                for k in range(lags):
                    xin[j, i, k] = np.float32(seq[i + k])
                xin[j, i, lags] = np.float32(sin_t[i])
                xin[j, i, lags + 1] = np.float32(cos_t[i])
        # stuck: run of identical readings vs the metric's own repeat rate
        moving = lv_mad[j] > 1e-9 * max(1.0, abs(lv_mean[j]))
        last_reset = 0
        for i in range(B):
            prev = last[j] if i == 0 else x[i - 1, j]
            sm_ = x[i, j] == prev and valid[i, j]
            same[i, j] = sm_
            last_reset = max(last_reset, 0 if sm_ else i + 1)
            r = run0[j] + (i + 1) if last_reset == 0 else float(i + 1 - last_reset)
            run[i, j] = r
            if sm_ and r >= stuck_min_run and moving:
                stuck[i, j] = max(-r * lq[j] - 3.0, 0.0)
        # spatial: outside the range seen so far by more than sp_tol of it
        width = sp_hi[j] - sp_lo[j]
        if sp_tol > 0 and width > 0:
            tol = sp_tol * width
            for i in range(B):
                if valid[i, j] and (xf[i, j] > sp_hi[j] + tol or xf[i, j] < sp_lo[j] - tol):
                    spatial[i] = True
    return (valid, xf, zl, zlc, raw, avail, bins, wbins, xn, xin, cus, e_drift, tail_s0, mu, zseas, same, run, stuck,
            spatial)


@_jit
def _tail_top(counts, m, c):
    """The calibrator's highest non-empty bin (-1: none)."""
    for k in range(counts.shape[2] - 1, -1, -1):
        if counts[m, c, k] > 0:
            return k
    return -1


@_jit
def evidence_args(u, counts, total, bpu):
    """The first half of `model.DeviceAnomalyModel._evidence`: each raw score's bin (`u`: log1p of the score), the
    tail probability's argument of the log (max(tail mass, 1e-300) / total) and each calibrator's top-bin argument.
    The logs of both are NumPy's (its log10 is not libm's on every machine)."""
    B, M, C = u.shape
    nb = counts.shape[2]
    b = np.empty((B, M, C), np.int64)
    arg = np.ones((B, M, C))
    arg_top = np.ones((M, C))
    tail = np.empty(nb)
    for m in range(M):
        for c in range(C):
            tot = total[m, c] if total[m, c] > 0 else 1.0
            t = 0.0
            for k in range(nb - 1, -1, -1):  # running sum from the top bin down (np.cumsum of the reversed counts)
                t = t + counts[m, c, k] if k != nb - 1 else counts[m, c, k]
                tail[k] = t
            top = _tail_top(counts, m, c)
            arg_top[m, c] = max(counts[m, c, max(top, 0)] / tot, 1e-300)
            for i in range(B):
                bi = min(int(u[i, m, c] * bpu), nb - 1)
                b[i, m, c] = bi
                arg[i, m, c] = max(tail[bi], 1e-300) / tot
    return b, arg, arg_top


@_jit
def evidence(raw, u, b, lg_arg, lg_top, counts, total, c_n, bpu, power, warmup, avail, valid, e_drift, stuck, n_comp):
    """The second half of `_evidence` (`lg_arg`, `lg_top`: log10 of `evidence_args`' arguments), then the block's
    evidence array (rows x metrics x components): calibrated components where available, drift and stuck as
    scored, all zero on a missing reading; the HST column is left for the caller."""
    B, M, C = raw.shape
    nb = counts.shape[2]
    ev = np.zeros((B, M, n_comp))
    tail = np.empty(nb)
    for m in range(M):
        for c in range(C):
            tot = total[m, c] if total[m, c] > 0 else 1.0
            t = 0.0
            for k in range(nb - 1, -1, -1):
                t = t + counts[m, c, k] if k != nb - 1 else counts[m, c, k]
                tail[k] = t
            top = _tail_top(counts, m, c)
            base = -lg_top[m, c] if top >= 0 else 0.0
            edge = (top + 1) / bpu
            ok = c_n[m, c] >= warmup and total[m, c] > 0
            for i in range(B):
                if not (ok and raw[i, m, c] > 0.0) or not avail[m, c] or not valid[i, m]:
                    continue
                bi = b[i, m, c]
                if bi <= top:
                    e = -lg_arg[i, m, c] if tail[bi] < tot else 0.0
                else:
                    e = base + power * (u[i, m, c] - edge) / _LN10
                ev[i, m, c] = max(e, 0.0)
        for i in range(B):
            if valid[i, m]:
                ev[i, m, 5] = e_drift[i, m]
                ev[i, m, 6] = stuck[i, m]
    return ev


@_jit
def fuse_alert(ev, hst, valid, spatial, spatial_e, add, paid, level, need, alone, e_full, soft, penalty, gap, decay,
               rearm, span, pass_f, suppress_factor, suppress_events, thr, left, burst, since, prev, e_alert, scores,
               best):
    """`model.DeviceAnomalyModel._run_block`'s fusion and alert loop over a block: the HST evidence into `ev`, per
    metric the two strongest evidences that may confirm each other, per row the strongest metric (`best`, -1: none),
    the spatial floor and the reading interval's correction (`add`, NaN: none), then each row's score (`scores`) with
    the confirmation, re-arming, burst discount and suppression. Returns the alert state after the block."""
    B, M = valid.shape
    for i in range(B):
        e, bj = strongest_metric(ev, i, M, valid, hst[i])
        if spatial[i]:
            e = max(e, spatial_e)
        if not math.isnan(add):
            e = e + add
        best[i] = bj
        s, left, burst, since, prev, e_alert = alert_step(e, prev, left, burst, since, e_alert, level, need, alone,
                                                          rearm, span, soft, penalty, gap, decay, e_full, paid, pass_f,
                                                          suppress_factor, suppress_events, thr)
        scores[i] = s
    return left, burst, since, prev, e_alert


@_jit
def forecast_scores(pred, has_fc, valid, xn, fc_err, raw, avail, zl, zseas):
    """The forecasters' errors (`pred`: metrics x rows, for the metrics in `has_fc`) as scores: each row's error,
    its z against the metric's error scale into `raw`'s forecast component (available where `has_fc`), and the
    HST features' tanh arguments (a quarter of the level, seasonal and forecast z; NumPy takes the tanh).
    Returns (errors, tanh arguments)."""
    B, M = valid.shape
    errs = np.zeros((B, M))
    z = np.empty((B, M, 3))
    for j in range(M):
        scale = max(fc_err[j] * 1.2533, 0.05)
        for i in range(B):
            zf = 0.0
            if has_fc[j]:
                err = xn[i, j] - pred[j, i] if valid[i, j] else 0.0
                errs[i, j] = err
                zf = err / scale
            raw[i, j, 3] = abs(zf)
            z[i, j, 0] = zl[i, j] * 0.25
            z[i, j, 1] = zseas[i, j] * 0.25
            z[i, j, 2] = zf * 0.25
        if has_fc[j]:
            avail[j, 3] = True
    return errs, z


def _tie_cache_to_kernels() -> list[str]:
    """Empty the compiled cache of this module's functions where it is older than `kernels.py` (whose functions are
    compiled into them: numba would load them stale). Returns the cache indexes looked at (tests)."""
    changed = os.stat(kernels.__file__).st_mtime
    indexes = []
    for f in list(globals().values()):
        if isinstance(f, numba.core.registry.CPUDispatcher) and f.py_func.__module__ == __name__:
            index = f._cache._cache_file._index_path  # noqa: SLF001 - numba has no public handle on it
            indexes.append(index)
            if os.path.exists(index) and os.stat(index).st_mtime < changed:
                f._cache.flush()  # noqa: SLF001
    return indexes


_tie_cache_to_kernels()
