"""`DeviceAnomalyModel`'s block learning in one compiled call (levels, drift calibration and tail, range, time-of-day
and hour-of-week profiles, forecast error scale and lag buffer, ramp level, stuck detector, calibrators).

Why: done in NumPy, learning a block took ~100 calls on arrays of a few elements, ~40 % of `score_learn_many`'s
time; each call's overhead, not its arithmetic, was the cost. The loops below do the NumPy code's arithmetic in its
order (running products and sums row by row, histogram sums gathered per bin before they are added, the same
operands in the same association), so the state after a block is the NumPy code's, bit for bit (docs/performance.md,
issue 19). The logarithms it needs come in computed by NumPy (the calibrators' bins, the drift tail's point), so only
`+ - * /`, min/max and `pow` run here. State arrays are updated in place.
"""

from __future__ import annotations

import math

import numpy as np

from online_models.anomaly.kernels import _ewm_last, _ewm_rows, _jit, diff_learn, ramp_learn


@_jit
def _profile(means, counts, mad, n, j, bins, xf, valid, lg_mad, alpha, d, ad, a):
    """`model._profile_learn` for metric `j` (bin means/counts frozen at the block start); returns the new
    (mad, n). `d`, `ad`, `a`: scratch of the block's length."""
    B = xf.shape[0]
    lim = 4.0 * max(1.2533 * mad, 0.05 * 1.2533 * lg_mad)
    clip = lim > 0 and n > 50
    cum = 0.0
    for i in range(B):
        b = bins[i]
        di = xf[i, j] - means[b, j]
        if clip:
            di = min(max(di, -lim), lim)
        d[i] = di
        ad[i] = abs(di)
        sv = 1.0 if valid[i, j] and counts[b, j] > 0 else 0.0
        cum = cum + sv
        n_prev = n + cum - sv
        a[i] = min(max(0.002, 1.0 / (n_prev + 1.0)), 0.5) if sv > 0 else 0.0
    mad = _ewm_last(mad, ad[:B], a[:B])
    n = n + cum
    # per bin: count, sum of d and of x over the valid rows (np.bincount: row order, from 0), then the update
    nb = means.shape[0]
    for b in range(nb):
        k = 0.0
        dsum = 0.0
        xsum = 0.0
        for i in range(B):
            if valid[i, j] and bins[i] == b:
                k += 1.0
                dsum += d[i]
                xsum += xf[i, j]
        if k > 0:
            sc = counts[b, j]
            if sc > 0:
                aa = max(alpha, 1.0 / (sc + 1.0))
                means[b, j] = means[b, j] + (1.0 - (1.0 - aa) ** k) * dsum / k
            else:
                means[b, j] = xsum / k
            counts[b, j] = sc + k
    return mad, n


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
            _ewm_rows(mean, xc, ab, mrows)
            for i in range(B):
                absd[i] = abs(xc[i] - (mean if i == 0 else mrows[i - 1]))
            mad = _ewm_last(mad, absd, ab)
            if pre == 0:
                lv_mean[j], lv_mad[j], lv_n[j] = mrows[B - 1], mad, n + nvalid
            else:
                lg_mean[j], lg_mad[j], lg_n[j] = mrows[B - 1], mad, n + nvalid
        # drift: excursions that ended beyond the tail point teach its mean excess (`_learn_excursions`)
        pk, bj, nj, s0, muj = cu_peak[j], cu_beta[j], cu_nexc[j], tail_s0[j], mu[j]
        for i in range(B):
            if not valid[i, j]:
                continue
            c = cus[i, j]
            if c > 0:
                pk = max(pk, c)
                continue
            if pk > s0:
                xcap = min(pk - s0, drift_cap * max(bj, muj))
                ae = max(tail_alpha, 1.0 / (nj + 1.0))
                bj = bj + ae * (xcap - bj)
                nj = nj + 1.0
            pk = 0.0
        cu_peak[j], cu_beta[j], cu_nexc[j] = pk, bj, nj
        # ... and its calibration: P(S > 0) and the mean positive S (capped at drift_cap x the scale)
        cap = drift_cap * cu_scale[j]
        cum = 0.0
        for i in range(B):
            v = 1.0 if valid[i, j] else 0.0
            cum = cum + v
            nprev = max(lg_n[j] - B + cum, 0.0)
            ab[i] = min(max(drift_rate, 1.0 / (nprev + 1.0)), 0.5) if valid[i, j] else 0.0
            pos = valid[i, j] and cus[i, j] > 0
            absd[i] = 1.0 if pos else 0.0
            xc[i] = min(cus[i, j], cap)
            mrows[i] = ab[i] if pos else 0.0
        cu_ppos[j] = _ewm_last(cu_ppos[j], absd, ab)
        cu_scale[j] = _ewm_last(cu_scale[j], xc, mrows)
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
        s_mad[j], s_n[j] = _profile(s_means, s_counts, s_mad[j], s_n[j], j, bins, xf, valid, lg_mad[j], s_alpha,
                                    scratch, absd, ab)
        if use_weekly:
            w_mad[j], w_n[j] = _profile(w_means, w_counts, w_mad[j], w_n[j], j, wbins, xf, valid, lg_mad[j], w_alpha,
                                        scratch, absd, ab)
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
