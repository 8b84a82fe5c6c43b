"""NAB scorer: hand-made cases with known scores, and NAB's own baseline on real files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from online_models.evaluation import nab

NAB = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "nab"  # ../shared beside the checkout
STD = nab.DEFAULT_PROFILES["standard"]


def _file(n=100, windows=((60, 69),)):
    ts = pd.date_range("2020-01-01", periods=n, freq="5min").to_numpy()
    return nab.label_file("cat/f.csv", ts, [(ts[a], ts[b]) for a, b in windows])


def test_scaled_sigmoid_and_probation():
    assert nab.scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert nab.scaled_sigmoid(0.0) == 0.0
    assert nab.scaled_sigmoid(3.0) == -1.0
    assert nab.probation_length(1000) == 150
    assert nab.probation_length(20000) == 750.0  # capped at 0.15 * 5000


def test_detection_at_window_start_earns_full_tp_weight():
    lf = _file()
    s = np.zeros(100)
    s[60] = 1.0
    r = nab.score_file(lf, s, 0.5, STD)
    assert r.score == pytest.approx(1.0) and (r.tp, r.fn, r.fp) == (1, 0, 0)
    s[61:70] = 1.0  # later detections in the same window add nothing
    assert nab.score_file(lf, s, 0.5, STD).score == pytest.approx(1.0)
    s2 = np.zeros(100)
    s2[69] = 1.0  # last row: position -1/10
    assert nab.score_file(lf, s2, 0.5, STD).score == pytest.approx(nab.scaled_sigmoid(-0.1) / nab.scaled_sigmoid(-1.0))


def test_missed_window_costs_fn_and_early_fp_costs_full_fp_weight():
    lf = _file()
    s = np.zeros(100)
    assert nab.score_file(lf, s, 0.5, STD).score == pytest.approx(-1.0)
    s[30] = 1.0  # before any window (after probation, row 15)
    r = nab.score_file(lf, s, 0.5, STD)
    assert r.score == pytest.approx(-1.0 - 0.11) and r.fp == 1
    s[5] = 1.0  # inside probation: ignored
    assert nab.score_file(lf, s, 0.5, STD).score == pytest.approx(-1.11)
    low_fn = nab.DEFAULT_PROFILES["reward_low_FN_rate"]
    assert nab.score_file(lf, np.zeros(100), 0.5, low_fn).score == pytest.approx(-2.0)


def test_fp_after_window_weighted_by_distance():
    lf = _file()
    s = np.zeros(100)
    s[70] = 1.0  # first row after a 10-row window ending at 69: position 1/9
    r = nab.score_file(lf, s, 0.5, STD)
    assert r.score == pytest.approx(-1.0 + 0.11 * nab.scaled_sigmoid(1 / 9))
    s[:] = 0
    s[99] = 1.0  # 30 rows after: position 30/9 >= 3 -> full FP cost
    assert nab.score_file(lf, s, 0.5, STD).score == pytest.approx(-1.11)


def test_corpus_threshold_sweep_and_normalisation():
    lf1, lf2 = _file(), _file(windows=())
    s1 = np.zeros(100)
    s1[60] = 0.9
    s1[30] = 0.8  # an FP that only a lower threshold would include
    s2 = np.zeros(100)
    s2[50] = 0.95  # an FP in a file without windows
    res = nab.score_corpus([lf1, lf2], [s1, s2], {"standard": STD})["standard"]
    # thresholds: 0.95 -> FP only (-1.11); 0.9 -> TP + that FP (0.89); 0.8 -> plus the early FP (0.78)
    assert res.threshold == pytest.approx(0.9)
    assert res.raw == pytest.approx(0.89)
    assert (res.null, res.perfect) == (-1.0, 1.0)
    assert res.normalized == pytest.approx(94.5)
    never = nab.score_corpus([lf1, lf2], [np.zeros(100), np.zeros(100)], {"standard": STD})["standard"]
    assert never.normalized == pytest.approx(0.0)


def test_results_round_trip(tmp_path):
    lf = _file()
    s = np.zeros(100)
    s[62] = 0.7
    nab.write_results(tmp_path, "det", "cat/f.csv", lf.timestamps, s)
    windows = tmp_path / "w.json"
    windows.write_text(json.dumps({"cat/f.csv": [[str(pd.Timestamp(lf.timestamps[60])), str(pd.Timestamp(lf.timestamps[69]))]]}))
    rep = nab.score_results(tmp_path, windows)
    assert rep.profiles["standard"].normalized == pytest.approx(100 * (nab.scaled_sigmoid(-0.8) / nab.scaled_sigmoid(-1) + 1) / 2)
    assert "standard" in nab.format_report(rep)
    s[62], s[30] = 0.0, 0.9  # a second detector on the same file: one false positive, the window missed
    nab.write_results(tmp_path / "other", "base", "cat/f.csv", lf.timestamps, s)
    base = nab.score_results(tmp_path / "other", windows)
    text = nab.format_report(rep, base)
    row = next(line for line in text.splitlines() if line.strip().startswith("cat/f.csv"))
    ours, theirs = rep.profiles["standard"].files[0].score, base.profiles["standard"].files[0].score
    assert f"{ours:7.3f} / {theirs:7.3f}" in row and ours > 0 > theirs  # each file: both detectors, side by side
    assert text.count("NAB scores for") == 2


def test_windowed_gaussian_on_real_files_matches_reference():
    """NAB's windowedGaussian on two real files; per-file values computed once and cross-checked
    against the full corpus, where this scorer reproduces NAB's windowed Gaussian (with scores kept at
    12 significant digits, like NAB's result CSVs)."""
    files = ["realKnownCause/ec2_request_latency_system_failure.csv", "artificialWithAnomaly/art_load_balancer_spikes.csv"]
    windows = nab.load_windows(NAB / "labels/combined_windows.json")
    labelled, scores = [], []
    for rel in files:
        ts, v = nab.read_series(NAB / "data" / rel)
        labelled.append(nab.label_file(rel, ts, windows[rel]))
        scores.append(nab.round_scores(nab.WindowedGaussianDetector().run(ts, v)))
    res = nab.score_corpus(labelled, scores, nab.load_profiles(NAB / "labels/profiles.json"))
    std = res["standard"]
    assert [f.tp for f in std.files] == [3, 1]
    assert [round(f.score, 4) for f in std.files] == [2.0215, -0.6924]
    assert std.normalized == pytest.approx(REF_STANDARD, abs=0.01)
    assert res["reward_low_FN_rate"].normalized == pytest.approx(REF_LOW_FN, abs=0.01)


# Per-file parts: ec2 +2.0215 (3/3 windows, 0 FP), load balancer -0.6924 (1/1, 15 FP), threshold 1.0.
REF_STANDARD = 66.613
REF_LOW_FN = 77.742


def test_windowed_gaussian_corpus_reproduces_nab_published_scores():
    """The 41 shared files (realKnownCause, realAWSCloudwatch, realAdExchange, the artificial ones): NAB's own
    windowed Gaussian scores 29.1 / 14.8 / 35.8 on exactly these, from its published result files."""
    assert len(list((NAB / "data").glob("*/*.csv"))) == 41, "the reference scores are for the 41-file corpus"
    rep = nab.evaluate(NAB / "data", NAB / "labels/combined_windows.json", NAB / "labels/profiles.json",
                       detector_factory=nab.WindowedGaussianDetector, detector_name="windowedGaussian")
    got = rep.normalized()
    assert got["standard"] == pytest.approx(29.1, abs=0.05)
    assert got["reward_low_FP_rate"] == pytest.approx(14.8, abs=0.05)
    assert got["reward_low_FN_rate"] == pytest.approx(35.8, abs=0.05)


def _named(name, windows=((60, 69),)):
    ts = pd.date_range("2020-01-01", periods=100, freq="5min").to_numpy()
    return nab.label_file(name, ts, [(ts[a], ts[b]) for a, b in windows])


def _spikes(**at):
    s = np.zeros(100)
    for i, v in at.items():
        s[int(i[1:])] = v
    return s


def test_leave_one_category_out_chooses_the_threshold_without_the_held_out_files():
    names = ["A/f.csv", "B/f.csv", "C/f.csv", "D/f.csv"]
    labelled = [_named(n) for n in names[:3]] + [_named("D/f.csv", windows=())]
    # A and B detect their window at 0.9; C only at 0.5 and has an early FP at 0.9; D (no windows) one FP at 0.95
    scores = [_spikes(r60=0.9), _spikes(r60=0.9), _spikes(r60=0.5, r30=0.9), _spikes(r50=0.95)]
    plain = nab.score_corpus(labelled, scores, {"standard": STD})["standard"]
    assert plain.threshold == pytest.approx(0.5)  # with C in view: all three windows for one FP
    held = {h.category: h for h in nab.leave_one_category_out(names, labelled, scores, {"standard": STD})}
    assert list(held) == ["A", "B", "C", "D"]
    c = held["C"].profiles["standard"]
    assert c.threshold == pytest.approx(0.9)  # chosen on A, B, D: C's own detection at 0.5 is unseen
    assert c.raw == pytest.approx(-1.11) and c.normalized == pytest.approx(100 * (-1.11 + 1) / 2)
    a = held["A"].profiles["standard"]
    assert a.threshold == pytest.approx(0.5) and a.normalized == pytest.approx(100.0)
    d = held["D"]
    assert not d.has_windows and d.profiles["standard"].raw == pytest.approx(-0.11) and d.profiles["standard"].files[0].fp == 1
    # the held-out files' scores never move their own threshold
    scores[2] = _spikes(r60=0.3, r30=0.2)
    again = {h.category: h for h in nab.leave_one_category_out(names, labelled, scores, {"standard": STD})}
    assert again["C"].profiles["standard"].threshold == pytest.approx(0.9)
    text = nab.format_loco(list(held.values()), {"standard": plain}, "det")
    assert "raw -0.11 fp 1" in text and "(3 categories with windows)" in text
