"""Numenta Anomaly Benchmark (NAB v1.1) scoring and prequential evaluation.

The scorer re-implements NAB's `nab/sweeper.py` + `nab/optimizer.py` +
`Runner.normalize` exactly (validated: NAB's windowed-Gaussian baseline gives the
published 12.1 / 4.8 / 16.0 on the 18 files of realKnownCause and the artificial categories), so numbers are comparable
with the NAB scoreboard:

* probation: the first ``min(floor(0.15 * n), 0.15 * 5000)`` rows of each file are
  not scored (NAB's ``Sweeper._getProbationaryLength``);
* a row inside a window earns ``scaledSigmoid(-(right - i + 1) / width) * tp / maxTP``
  (so the first row of a window earns exactly the TP weight), a window's value is
  its best (= earliest) detection, a window without detection costs ``-fn``;
* a row outside windows is an FP worth ``scaledSigmoid(|prevRight - i| / (prevWidth - 1)) * fp``
  or ``-fp`` before the first window;
* detections are ``score >= threshold``; ONE threshold per profile is swept over the
  whole corpus (all unique score values) and the best total wins (ties: highest threshold);
* normalised score ``100 * (raw - null) / (perfect - null)`` with ``perfect = tp * #windows``
  and ``null`` the score of a detector that never fires.

Detectors are run prequentially (each row is scored before the detector sees it).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

DEFAULT_PROFILES: dict[str, dict[str, float]] = {
    "standard": {"tpWeight": 1.0, "fnWeight": 1.0, "fpWeight": 0.11, "tnWeight": 1.0},
    "reward_low_FP_rate": {"tpWeight": 1.0, "fnWeight": 1.0, "fpWeight": 0.22, "tnWeight": 1.0},
    "reward_low_FN_rate": {"tpWeight": 1.0, "fnWeight": 2.0, "fpWeight": 0.11, "tnWeight": 1.0},
}
PROFILE_ORDER = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")
PROBATION_PERCENT = 0.15


# --------------------------------------------------------------------------- scoring primitives


def scaled_sigmoid(position: float) -> float:
    """NAB's weighting: -1 (left edge of a window) -> 0.98661, 0 (right edge) -> 0, >= 3 -> -1."""
    if position >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


def probation_length(n_rows: int, percent: float = PROBATION_PERCENT) -> float:
    """Rows ``i < probation_length(n)`` are not scored (NAB: 15 %, at most 750 rows)."""
    return min(math.floor(percent * n_rows), percent * 5000)


@dataclass
class LabelledFile:
    """One data file's rows, mapped onto NAB's per-row sweep weights (profile independent parts)."""

    name: str
    timestamps: np.ndarray  # datetime64[ns]
    windows: list[tuple[int, int]]  # inclusive row index ranges
    window_of_row: np.ndarray  # window number per row, -1 outside windows
    tp_unit: np.ndarray  # scaledSigmoid(pos)/maxTP inside windows (multiply by tpWeight)
    fp_unit: np.ndarray  # scaledSigmoid(pos) outside windows (multiply by fpWeight), <= 0
    scorable: np.ndarray  # False in the probation period

    @property
    def n_windows(self) -> int:
        return len(self.windows)

    def scorable_windows(self) -> list[int]:
        """Windows with at least one row after probation (only those count as TP/FN in NAB)."""
        return sorted({int(w) for w in np.unique(self.window_of_row[self.scorable]) if w >= 0})


def label_file(name: str, timestamps: np.ndarray, windows: Iterable[tuple[object, object]]) -> LabelledFile:
    """Compute NAB's sweep weights for every row (mirrors ``Sweeper.calcSweepScore``)."""
    ts = np.asarray(pd.to_datetime(pd.Series(timestamps)).to_numpy())
    n = len(ts)
    idx_windows: list[tuple[int, int]] = []
    for start, end in windows:
        s = int(np.searchsorted(ts, np.datetime64(pd.Timestamp(start)), side="left"))
        e = int(np.searchsorted(ts, np.datetime64(pd.Timestamp(end)), side="right")) - 1
        if s <= e:
            idx_windows.append((s, e))
    idx_windows.sort()
    window_of_row = np.full(n, -1, dtype=np.int64)
    tp_unit = np.zeros(n)
    fp_unit = np.zeros(n)
    max_tp = scaled_sigmoid(-1.0)
    prev_right: int | None = None
    prev_width: float | None = None
    wi = 0
    i = 0
    while i < n:
        if wi < len(idx_windows) and i == idx_windows[wi][0]:
            s, e = idx_windows[wi]
            width = float(e - s + 1)
            for j in range(s, e + 1):
                window_of_row[j] = wi
                tp_unit[j] = scaled_sigmoid(-(e - j + 1) / width) / max_tp
            prev_right, prev_width = e, width
            wi += 1
            i = e + 1
            continue
        if prev_right is None:
            fp_unit[i] = scaled_sigmoid(3.0)
        else:
            # NAB divides by (prevWidth - 1); a one-row window would divide by zero there.
            denom = max(prev_width - 1.0, 1.0)
            fp_unit[i] = scaled_sigmoid(abs(prev_right - i) / denom)
        i += 1
    scorable = np.arange(n) >= probation_length(n)
    return LabelledFile(name, ts, idx_windows, window_of_row, tp_unit, fp_unit, scorable)


@dataclass
class FileScore:
    name: str
    score: float
    tp: int  # windows detected
    fn: int  # windows missed
    fp: int  # detections outside windows (rows)
    n_windows: int


def score_file(lf: LabelledFile, scores: np.ndarray, threshold: float, cost: dict[str, float]) -> FileScore:
    """Score one file's anomaly scores at a given threshold (detections are ``score >= threshold``)."""
    scores = np.asarray(scores, dtype=float)
    det = (scores >= threshold) & lf.scorable
    total = 0.0
    tp = fn = 0
    for w in lf.scorable_windows():
        in_w = det & (lf.window_of_row == w)
        if in_w.any():
            total += float(np.max(lf.tp_unit[in_w])) * cost["tpWeight"]
            tp += 1
        else:
            total -= cost["fnWeight"]
            fn += 1
    fp_rows = det & (lf.window_of_row < 0)
    total += float(np.sum(lf.fp_unit[fp_rows])) * cost["fpWeight"]
    return FileScore(lf.name, total, tp, fn, int(fp_rows.sum()), len(lf.scorable_windows()))


def optimize_threshold(files: list[LabelledFile], scores: list[np.ndarray], cost: dict[str, float]) -> tuple[float, float]:
    """Sweep one threshold over the whole corpus (NAB ``optimizeThreshold``); returns (threshold, raw score).

    Mirrors ``Sweeper.calcScoreByThreshold``: rows sorted by score, each unique
    score value is a candidate threshold, the best total wins, ties go to the
    highest threshold.
    """
    all_scores, all_tp, all_fp, all_win = [], [], [], []
    n_windows = 0
    for lf, s in zip(files, scores, strict=True):
        m = lf.scorable
        all_scores.append(np.asarray(s, dtype=float)[m])
        all_tp.append(lf.tp_unit[m] * cost["tpWeight"])
        all_fp.append(lf.fp_unit[m] * cost["fpWeight"])
        w = lf.window_of_row[m]
        all_win.append(np.where(w >= 0, w + n_windows, -1))
        n_windows += lf.n_windows
    sc = np.concatenate(all_scores)
    tpw = np.concatenate(all_tp)
    fpw = np.concatenate(all_fp)
    win = np.concatenate(all_win)
    present = np.unique(win[win >= 0])
    order = np.argsort(-sc, kind="stable")
    sc, tpw, fpw, win = sc[order], tpw[order], fpw[order], win[order]

    best_val: dict[int, float] = {int(w): -cost["fnWeight"] for w in present}
    total = -cost["fnWeight"] * len(present)
    best_threshold, best_score = 1.1, total  # 1.1: nothing fires
    i = 0
    n = len(sc)
    while i < n:
        t = sc[i]
        j = i
        while j < n and sc[j] == t:
            w = int(win[j])
            if w < 0:
                total += float(fpw[j])
            else:
                v = float(tpw[j])
                if v > best_val[w]:
                    total += v - best_val[w]
                    best_val[w] = v
            j += 1
        if total > best_score + 1e-12:
            best_threshold, best_score = float(t), total
        i = j
    return best_threshold, best_score


# --------------------------------------------------------------------------- corpus scoring


@dataclass
class ProfileResult:
    profile: str
    threshold: float
    raw: float
    null: float
    perfect: float
    normalized: float
    files: list[FileScore] = field(default_factory=list)


@dataclass
class NabReport:
    """Corpus scores per profile, plus where the results went and how long detection took."""

    profiles: dict[str, ProfileResult]
    files: list[str]
    detector: str = ""
    seconds_detect: float = 0.0
    n_rows: int = 0
    out_dir: Path | None = None
    labelled: list[LabelledFile] = field(default_factory=list, repr=False)
    scores: list[np.ndarray] = field(default_factory=list, repr=False)
    costs: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)

    def loco(self) -> list[HeldOut]:
        return leave_one_category_out(self.files, self.labelled, self.scores, self.costs)

    def normalized(self) -> dict[str, float]:
        return {p: r.normalized for p, r in self.profiles.items()}


def load_profiles(profiles_file: Path | None = None) -> dict[str, dict[str, float]]:
    """NAB profiles.json (``{"standard": {"CostMatrix": {...}}, ...}``), or NAB's defaults."""
    if profiles_file is None:
        return {k: dict(v) for k, v in DEFAULT_PROFILES.items()}
    raw = json.loads(Path(profiles_file).read_text())
    return {name: dict(p.get("CostMatrix", p)) for name, p in raw.items()}


def load_windows(windows_file: Path) -> dict[str, list[tuple[str, str]]]:
    raw = json.loads(Path(windows_file).read_text())
    return {k: [(w[0], w[1]) for w in v] for k, v in raw.items()}


def score_corpus(
    labelled: list[LabelledFile],
    scores: list[np.ndarray],
    profiles: dict[str, dict[str, float]],
) -> dict[str, ProfileResult]:
    """Optimise the corpus threshold per profile, then score every file at it and normalise."""
    return {name: score_at(name, optimize_threshold(labelled, scores, cost)[0], labelled, scores, cost)
            for name, cost in profiles.items()}


def score_at(profile: str, threshold: float, labelled: list[LabelledFile], scores: list[np.ndarray],
             cost: dict[str, float]) -> ProfileResult:
    """Score files at a given threshold and normalise (0 when there are no windows: perfect == null)."""
    fs = [score_file(lf, s, threshold, cost) for lf, s in zip(labelled, scores, strict=True)]
    raw = sum(f.score for f in fs)
    null = -cost["fnWeight"] * sum(f.n_windows for f in fs)
    perfect = cost["tpWeight"] * sum(lf.n_windows for lf in labelled)
    norm = 100.0 * (raw - null) / (perfect - null) if perfect != null else 0.0
    return ProfileResult(profile, threshold, raw, null, perfect, norm, fs)


# --------------------------------------------------------------------------- leave one category out


def category_of(rel: str) -> str:
    """A NAB file's category: the first path component (``realKnownCause/x.csv`` -> ``realKnownCause``)."""
    return rel.split("/", 1)[0] if "/" in rel else ""


@dataclass
class HeldOut:
    """One category's score per profile at thresholds chosen on the other categories' files only."""

    category: str
    files: list[str]
    profiles: dict[str, ProfileResult]

    @property
    def has_windows(self) -> bool:
        return any(r.perfect != r.null for r in self.profiles.values())


def leave_one_category_out(names: list[str], labelled: list[LabelledFile], scores: list[np.ndarray],
                           profiles: dict[str, dict[str, float]]) -> list[HeldOut]:
    """For each category: sweep the threshold over every OTHER category's files (NAB's corpus-wide sweep), then
    score the held-out category at it. The threshold is the detector's only knob fitted to labels, so this
    says how much the plain score owes to choosing it with the test files in view."""
    cats = sorted({category_of(n) for n in names})
    out = []
    for cat in cats:
        test = [i for i, n in enumerate(names) if category_of(n) == cat]
        train = [i for i, n in enumerate(names) if category_of(n) != cat]
        if not train:
            raise ValueError(f"leave-one-category-out needs more than one category (all files are in {cat!r})")
        res = {}
        for p, cost in profiles.items():
            thr, _ = optimize_threshold([labelled[i] for i in train], [scores[i] for i in train], cost)
            res[p] = score_at(p, thr, [labelled[i] for i in test], [scores[i] for i in test], cost)
        out.append(HeldOut(cat, [names[i] for i in test], res))
    return out


def format_loco(held: list[HeldOut], plain: dict[str, ProfileResult], detector: str,
                baseline: list[HeldOut] | None = None, baseline_plain: dict[str, ProfileResult] | None = None,
                baseline_name: str = "windowedGaussian") -> str:
    """The held-out table: per category and profile, this detector's score (and the baseline's, same procedure)."""
    profs = [p for p in PROFILE_ORDER if p in plain] + [p for p in plain if p not in PROFILE_ORDER]
    both = baseline is not None and baseline_plain is not None
    lines = [f"Leave one category out: {detector!r}" + (f" vs {baseline_name!r}" if both else "")
             + ". The detection threshold is the only knob fitted to the labels (the detector has no other tuned",
             "setting at run time); here it is swept on the other categories' files only, then applied to the held-out one.",
             "Cells: NAB-normalised score of the held-out category" + (f", {detector} / {baseline_name}" if both else "")
             + " (threshold). A category without windows (perfect == null) has no normalised score:",
             "its cell is the raw score (<= 0, false positives only) and the number of false-positive rows."]
    lines.append(f"  {'held-out category':<24} {'files':>5} {'windows':>7}  " + "  ".join(f"{p:<34}" for p in profs))

    def cell(r: ProfileResult, b: ProfileResult | None, windows: bool) -> str:
        if windows:
            text = f"{r.normalized:6.1f}" + (f" / {b.normalized:6.1f}" if b else "") + f" (thr {r.threshold:.4g})"
        else:
            fp = sum(f.fp for f in r.files)
            text = f"raw {r.raw:.2f} fp {fp}" + (f" / raw {b.raw:.2f} fp {sum(f.fp for f in b.files)}" if b else "")
        return f"{text:<34}"

    base = {h.category: h for h in baseline} if both else {}
    for h in held:
        n_windows = sum(f.n_windows for f in next(iter(h.profiles.values())).files)
        b = base.get(h.category)
        lines.append(f"  {h.category:<24} {len(h.files):>5} {n_windows:>7}  "
                     + "  ".join(cell(h.profiles[p], b.profiles[p] if b else None, h.has_windows) for p in profs))
    scored = [h for h in held if h.has_windows]

    def mean(hs: list[HeldOut], p: str) -> float:
        return float(np.mean([h.profiles[p].normalized for h in hs])) if hs else float("nan")

    bscored = [base[h.category] for h in scored if h.category in base]
    lines.append(f"  {'mean over categories':<24} {'':>5} {'':>7}  " + "  ".join(
        f"{f'{mean(scored, p):6.1f}' + (f' / {mean(bscored, p):6.1f}' if both else ''):<34}" for p in profs)
        + f"  ({len(scored)} categories with windows)")
    lines.append(f"  {'plain (all files, one)':<24} {'':>5} {'':>7}  " + "  ".join(
        f"{f'{plain[p].normalized:6.1f}' + (f' / {baseline_plain[p].normalized:6.1f}' if both else '') + f' (thr {plain[p].threshold:.4g})':<34}"
        for p in profs))
    return "\n".join(lines)


def round_scores(scores: np.ndarray, digits: int = 12) -> np.ndarray:
    """Keep ``digits`` significant digits, as NAB's published result CSVs do.

    Matters for saturating detectors: windowedGaussian's ``1 - Q(z)`` differs from
    1.0 only at the 1e-13..1e-16 level; NAB's published 4.8 (low-FP) is reproduced
    at 12 digits (full float precision gives 7.0; standard and low-FN are unchanged).
    """
    s = np.asarray(scores, dtype=float)
    return np.array([float(f"{v:.{digits}g}") for v in s.tolist()]) if len(s) else s


def read_series(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A NAB data CSV -> (timestamps as datetime64[ns], values as float64)."""
    df = pd.read_csv(path)
    return pd.to_datetime(df["timestamp"]).to_numpy(), df["value"].to_numpy(dtype=float)


def _files_in(data_dir: Path, windows: dict[str, list]) -> list[str]:
    """Relative paths (category/file.csv) that are both labelled and present, sorted."""
    return sorted(rel for rel in windows if (data_dir / rel).is_file())


def score_results(
    results_dir: Path,
    windows_file: Path,
    profiles_file: Path | None = None,
    data_dir: Path | None = None,
) -> NabReport:
    """Score existing NAB-style result CSVs (``timestamp,anomaly_score`` per file).

    A result for ``cat/file.csv`` may be named ``cat/file.csv`` or ``cat/<detector>_file.csv``
    (NAB's layout). Timestamps come from the result file itself (``data_dir`` unused
    except to restrict the file list when given).
    """
    results_dir = Path(results_dir)
    windows = load_windows(windows_file)
    profiles = load_profiles(profiles_file)
    labelled, scores, names = [], [], []
    for rel in sorted(windows):
        if data_dir is not None and not (Path(data_dir) / rel).is_file():
            continue
        cat, fname = rel.rsplit("/", 1) if "/" in rel else ("", rel)
        cand = [results_dir / rel, *sorted((results_dir / cat).glob(f"*_{fname}"))]
        path = next((c for c in cand if c.is_file()), None)
        if path is None:
            continue
        df = pd.read_csv(path)
        ts = pd.to_datetime(df["timestamp"]).to_numpy()
        labelled.append(label_file(rel, ts, windows[rel]))
        scores.append(df["anomaly_score"].to_numpy(dtype=float))
        names.append(rel)
    if not names:
        raise FileNotFoundError(f"no result CSVs for the labelled files under {results_dir}")
    return NabReport(score_corpus(labelled, scores, profiles), names, detector=results_dir.name,
                     n_rows=sum(len(s) for s in scores), labelled=labelled, scores=scores, costs=profiles)


# --------------------------------------------------------------------------- detectors


class SeriesDetector(Protocol):
    """A univariate prequential detector: one score in [0, 1] per row, each row scored before learning it."""

    def run(self, timestamps: np.ndarray, values: np.ndarray) -> np.ndarray: ...


def _normal_probability(x: float, mean: float, std: float) -> float:
    """NAB's ``normalProbability``: Gaussian tail probability on the far side of the mean (Q function)."""
    if x < mean:
        x = 2 * mean - x
    return 0.5 * math.erfc((x - mean) / std / math.sqrt(2))


class WindowedGaussianDetector:
    """NAB's ``windowedGaussian`` baseline, same semantics (window 6400, step 100).

    Score ``1 - Q(|z|)`` against the mean/std of the window *before* the row; the
    window grows to 6400 rows (updated every row), then slides by 100-row steps.
    Used to validate this scorer against NAB's published numbers.
    """

    def __init__(self, window_size: int = 6400, step_size: int = 100) -> None:
        self.window_size = window_size
        self.step_size = step_size

    def run(self, timestamps: np.ndarray, values: np.ndarray) -> np.ndarray:
        x = np.asarray(values, dtype=float)
        n, w, k = len(x), self.window_size, self.step_size
        out = np.zeros(n)
        for i in range(1, n):
            if i <= w:  # window = x[0:i], recomputed every row while growing
                lo, hi = 0, i
            else:  # sliding: window = x[100*j : w + 100*j], j = completed steps
                j = (i - w) // k
                lo, hi = k * j, w + k * j
            seg = x[lo:hi]
            mean, std = float(np.mean(seg)), float(np.std(seg))
            if std == 0.0:
                std = 0.000001
            out[i] = 1.0 - _normal_probability(float(x[i]), mean, std)
        return out


class DeviceModelDetector:
    """Runs the production detector, a :class:`~online_models.anomaly.bank.DeviceBank` (as the sensor path's
    `online_models.sensing.score_batch`), with one device holding one metric ``value``."""

    def __init__(self, **model_kwargs: object) -> None:
        self.model_kwargs = model_kwargs

    def run(self, timestamps: np.ndarray, values: np.ndarray) -> np.ndarray:
        from online_models.anomaly.bank import DeviceBank

        bank = DeviceBank(capacity=1, **self.model_kwargs)
        ts = np.asarray(timestamps).astype("datetime64[ns]").astype(np.int64) / 1e9
        slots = np.full(len(ts), bank.slot("file"), dtype=np.int64)
        return bank.score_learn_batch(slots, ts, {"value": np.asarray(values, dtype=float)}).scores


def write_results(out_dir: Path, detector: str, rel: str, timestamps: np.ndarray, scores: np.ndarray) -> Path:
    """NAB layout: ``out_dir/<category>/<detector>_<file>.csv`` with ``timestamp,anomaly_score``."""
    cat, fname = rel.rsplit("/", 1) if "/" in rel else ("", rel)
    path = Path(out_dir) / cat / f"{detector}_{fname}"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({
        "timestamp": pd.to_datetime(timestamps).strftime("%Y-%m-%d %H:%M:%S"),
        "anomaly_score": np.asarray(scores, dtype=float),
    }).to_csv(path, index=False)
    return path


def evaluate(
    data_dir: Path,
    windows_file: Path,
    profiles_file: Path | None = None,
    out_dir: Path | None = None,
    detector_factory: Callable[[], SeriesDetector] = DeviceModelDetector,
    detector_name: str = "wharf",
    files: Iterable[str] | None = None,
    digits: int = 12,
    progress: Callable[[int, int], None] | None = None,
) -> NabReport:
    """Run a detector prequentially over every labelled NAB file under ``data_dir`` and score it.

    ``detector_factory`` is called once per file (a fresh model per series, like one
    model per device). ``files`` optionally restricts to some relative paths.
    Scores are kept at ``digits`` significant digits (as written to the CSVs, so
    re-scoring the CSVs with :func:`score_results` gives the same numbers).
    ``progress(done, total)`` is called after each file.
    """
    data_dir = Path(data_dir)
    windows = load_windows(windows_file)
    profiles = load_profiles(profiles_file)
    names = list(files) if files is not None else _files_in(data_dir, windows)
    labelled, scores = [], []
    t0 = time.perf_counter()
    n_rows = 0
    for i, rel in enumerate(names):
        if progress is not None:
            progress(i, len(names))
        ts, values = read_series(data_dir / rel)
        s = round_scores(detector_factory().run(ts, values), digits)
        if len(s) != len(values):
            raise ValueError(f"{rel}: detector returned {len(s)} scores for {len(values)} rows")
        labelled.append(label_file(rel, ts, windows.get(rel, [])))
        scores.append(s)
        n_rows += len(s)
        if out_dir is not None:
            write_results(Path(out_dir), detector_name, rel, ts, s)
    seconds = time.perf_counter() - t0
    return NabReport(score_corpus(labelled, scores, profiles), names, detector=detector_name,
                     seconds_detect=seconds, n_rows=n_rows, out_dir=Path(out_dir) if out_dir else None,
                     labelled=labelled, scores=scores, costs=profiles)


def format_report(report: NabReport, baseline: NabReport | None = None) -> str:
    """Plain-text table: corpus scores for every profile, then a per-file breakdown.

    With ``baseline`` (another detector's report on the same files, e.g. the windowed Gaussian), its corpus
    scores follow and each file's cell holds both detectors' score, each at its own corpus threshold."""
    if baseline is not None and baseline.files != report.files:
        raise ValueError(f"the baseline scored other files ({len(baseline.files)} vs {len(report.files)})")
    profs = [p for p in PROFILE_ORDER if p in report.profiles] + [p for p in report.profiles if p not in PROFILE_ORDER]
    lines = []
    for rep in (report, baseline) if baseline is not None else (report,):
        lines.append(f"NAB scores for {rep.detector!r}: {len(rep.files)} files, {rep.n_rows} rows"
                     + (f", detection {rep.seconds_detect:.1f}s" if rep.seconds_detect else ""))
        for p in profs:
            r = rep.profiles[p]
            lines.append(f"  {p:<20} score {r.normalized:6.1f}   threshold {r.threshold:.6g}   "
                         f"raw {r.raw:8.3f}  null {r.null:6.1f}  perfect {r.perfect:5.1f}")
    lines.append("")
    if baseline is None:
        lines.append("Per file (raw NAB score at the corpus threshold, windows detected / scored, false-positive rows):")
    else:
        lines.append(f"Per file: raw NAB score at each detector's corpus threshold, {report.detector} / {baseline.detector}; "
                     f"then {report.detector}'s windows detected / scored and false-positive rows.")
    width = 24 if baseline is None else 32
    lines.append(f"  {'file':<58} " + " ".join(f"{p[:width]:>{width}}" for p in profs))
    for i, name in enumerate(report.files):
        cells = []
        for p in profs:
            f = report.profiles[p].files[i]
            both = f"{f.score:7.3f}" + (f" / {baseline.profiles[p].files[i].score:7.3f}" if baseline is not None else "")
            cells.append(f"{both} tp{f.tp}/{f.n_windows} fp{f.fp:<4d}")
        lines.append(f"  {name:<58} " + " ".join(f"{c:>{width}}" for c in cells))
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - manual runs
    import argparse

    ap = argparse.ArgumentParser(description="Run and score a detector on NAB.")
    ap.add_argument("--nab", type=Path, required=True, help="NAB root (with data/ and labels/) or its data/ folder")
    ap.add_argument("--labels", type=Path, default=None)
    ap.add_argument("--profiles", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--detector", choices=["wharf", "windowedGaussian"], default="wharf")
    ap.add_argument("--score-only", type=Path, default=None, help="score existing result CSVs in this folder")
    a = ap.parse_args()
    root = a.nab
    data = root / "data" if (root / "data").is_dir() else root
    labels = a.labels or data.parent / "labels" / "combined_windows.json"
    profiles = a.profiles or (data.parent / "labels" / "profiles.json")
    profiles = profiles if profiles.is_file() else None
    if a.score_only:
        rep = score_results(a.score_only, labels, profiles, data)
    else:
        fac: Callable[[], SeriesDetector] = WindowedGaussianDetector if a.detector == "windowedGaussian" else DeviceModelDetector
        rep = evaluate(data, labels, profiles, a.out, fac, a.detector)
    print(format_report(rep))
