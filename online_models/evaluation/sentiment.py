"""Prequential (test-then-train) evaluation and throughput of the sentiment models.

Rows are read in file order; each review is scored by the model as it stands,
and only then is its label learned — the way the live stream sees reviews.
Input: `sentence<TAB>label` lines (1 positive, 0 negative), no header, split on
the LAST tab (sentences may contain stray quotes, so no CSV reader).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from online_models.sentiment import DEFAULT_ENCODER, SentimentModel

ModelFactory = Callable[[], SentimentModel]


def read_labelled(path: Path) -> list[tuple[str, int]]:
    """(sentence, label) rows; blank lines skipped, a malformed line raises with its number."""
    rows: list[tuple[str, int]] = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            text, sep, label = line.rpartition("\t")
            if not sep or label.strip() not in ("0", "1"):
                raise ValueError(f"{path}:{number}: expected 'sentence<TAB>0|1'")
            rows.append((text, int(label)))
    return rows


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """ROC AUC by the Mann-Whitney rank statistic (ties get average ranks); nan if one class only."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


@dataclass(slots=True)
class SentimentReport:
    path: str
    encoder: str
    rows: int
    accuracy: float  # predicted positive iff score > 0
    auc: float
    positives: int
    seconds: float
    # accuracy on consecutive quarters of the stream: shows learning as reviews arrive
    accuracy_by_quarter: list[float] = field(default_factory=list)

    @property
    def reviews_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("nan")


def evaluate(
    path: Path,
    model_factory: ModelFactory | None = None,
    out: Path | None = None,
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> SentimentReport:
    """Prequential accuracy and ROC AUC of a fresh model on one labelled file.

    Features are precomputed `batch_size` rows at a time (label-free, state-free:
    the encoder is frozen); prediction and learning remain strictly row by row.
    `out`, if given, gets one TSV line per row: row, label, score, predicted, confidence.
    `progress(done, total)` is called before each batch.
    """
    model = model_factory() if model_factory is not None else SentimentModel(DEFAULT_ENCODER)
    rows = read_labelled(path)
    scores: list[float] = []
    lines: list[str] = []
    started = time.perf_counter()
    for start in range(0, len(rows), batch_size):
        if progress is not None:
            progress(start, len(rows))
        chunk = rows[start : start + batch_size]
        model.precompute([text for text, _ in chunk])
        for text, label in chunk:
            pred = model.predict_one(text)
            model.learn_one(text, label == 1)
            scores.append(pred.score)
            if out is not None:
                lines.append(f"{len(scores)}\t{label}\t{pred.score:.6f}\t{pred.label}\t{pred.confidence:.4f}")
    seconds = time.perf_counter() - started
    labels = np.array([label for _, label in rows], dtype=int)
    correct = (np.array(scores) > 0).astype(int) == labels
    if out is not None:
        Path(out).write_text("row\tlabel\tscore\tpredicted\tconfidence\n" + "\n".join(lines) + "\n", encoding="utf-8")
    quarters = [float(q.mean()) for q in np.array_split(correct, 4) if len(q)]
    return SentimentReport(
        path=str(path),
        encoder=model.encoder,
        rows=len(rows),
        accuracy=float(correct.mean()) if len(rows) else float("nan"),
        auc=roc_auc(labels, scores),
        positives=int(labels.sum()),
        seconds=seconds,
        accuracy_by_quarter=quarters,
    )


def format_report(report: SentimentReport) -> str:
    quarters = " / ".join(f"{q:.1%}" for q in report.accuracy_by_quarter)
    return (
        f"{report.path}: {report.rows} reviews ({report.positives} positive), encoder {report.encoder}\n"
        f"  prequential accuracy {report.accuracy:.1%}   ROC AUC {report.auc:.3f}\n"
        f"  accuracy by quarter  {quarters}\n"
        f"  {report.reviews_per_second:.0f} reviews/s (predict + learn, {report.seconds:.1f}s)"
    )


@dataclass(slots=True)
class Throughput:
    encoder: str
    reviews: int
    one_at_a_time: float  # reviews/s, predict_one + learn_one per review
    batched: float  # reviews/s, predict_many + learn_many per batch
    load_seconds: float  # building the model, encoder weights included


def measure_throughput(
    encoder: str,
    texts: Sequence[str],
    positives: Sequence[bool],
    batch_size: int = 32,
) -> Throughput:
    """Reviews/s for predict + learn, per review and in batches; warm-up excluded from both."""
    started = time.perf_counter()
    model = SentimentModel(encoder, batch_size=batch_size)
    model.predict_many(["warm up the encoder"])
    load = time.perf_counter() - started

    def timed(run: Callable[[SentimentModel], None]) -> float:
        fresh = SentimentModel(encoder, batch_size=batch_size)
        fresh._minilm = model._minilm  # share the loaded weights: time the work, not the load
        t0 = time.perf_counter()
        run(fresh)
        return len(texts) / (time.perf_counter() - t0)

    def single(m: SentimentModel) -> None:
        for text, pos in zip(texts, positives):
            m.predict_one(text)
            m.learn_one(text, pos)

    def batched(m: SentimentModel) -> None:
        for i in range(0, len(texts), batch_size):
            m.predict_many(texts[i : i + batch_size])
            m.learn_many(texts[i : i + batch_size], positives[i : i + batch_size])

    return Throughput(encoder, len(texts), timed(single), timed(batched), load)


def format_throughput(results: Sequence[Throughput]) -> str:
    lines = [f"{'encoder':<9} {'one-by-one':>12} {'batched':>12} {'load':>7}"]
    for r in results:
        lines.append(f"{r.encoder:<9} {r.one_at_a_time:>10.0f}/s {r.batched:>10.0f}/s {r.load_seconds:>6.1f}s")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m online_models.evaluation.sentiment FILE... [--encoder X] [--out FILE] [--threads N]`
    (stand-in until `wharf evaluate sentiment` is wired)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--encoder", default=DEFAULT_ENCODER)
    parser.add_argument("--out", type=Path, default=None, help="per-row TSV (only with one input file)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    for path in args.files:
        report = evaluate(path, lambda: SentimentModel(args.encoder), out=args.out if len(args.files) == 1 else None)
        print(format_report(report))


if __name__ == "__main__":
    main()
