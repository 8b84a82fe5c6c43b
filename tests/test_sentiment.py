"""Online sentiment model and its prequential evaluation (commerce path).

Thresholds below were measured on the first 200 lines of the shared files
(minilm: 90.0% amazon / 88.5% yelp; hashing: 84.5% amazon) and carry ~5 points of margin.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from online_models.evaluation.sentiment import evaluate, format_report, read_labelled, roc_auc  # noqa: E402
from online_models.sentiment import SentimentModel, rating_to_positive  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "sentiment"  # ../shared beside the checkout
POSITIVE = ["I love it, excellent quality and works great!", "Absolutely wonderful, best purchase ever."]
NEGATIVE = ["Terrible. It broke after one day, I hate it.", "Awful quality, a complete waste of money."]


@pytest.fixture(scope="module")
def minilm() -> SentimentModel:
    import torch

    torch.set_num_threads(2)
    model = SentimentModel("minilm")
    model.predict_one("load the encoder once")
    return model


def _fresh_minilm(loaded: SentimentModel) -> SentimentModel:
    """A new untrained model sharing the already loaded encoder (fast)."""
    model = SentimentModel("minilm")
    model._minilm = loaded._minilm
    return model


def _head(tmp_path: Path, name: str, n: int = 200) -> Path:
    assert (DATA / name).exists(), f"shared dataset {DATA / name} is missing (the tests need ../shared/datasets)"
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()[:n]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("encoder", ["lexicon", "hashing", "minilm"])
def test_cold_start_prior_gets_the_sign(encoder: str, minilm: SentimentModel) -> None:
    model = _fresh_minilm(minilm) if encoder == "minilm" else SentimentModel(encoder)
    for text in POSITIVE:
        pred = model.predict_one(text)
        assert pred.score > 0.2 and pred.label == "positive", (text, pred)
        assert 0.5 <= pred.confidence <= 1.0
    for text in NEGATIVE:
        pred = model.predict_one(text)
        assert pred.score < -0.2 and pred.label == "negative", (text, pred)
    flat = model.predict_one("The parcel was delivered on Tuesday.")
    assert -1.0 <= flat.score <= 1.0 and abs(flat.score) < 0.5


@pytest.mark.parametrize("encoder", ["hashing", "minilm"])
def test_learning_moves_predictions(encoder: str, minilm: SentimentModel) -> None:
    """Shop jargon VADER does not know: labels must teach its polarity."""
    model = _fresh_minilm(minilm) if encoder == "minilm" else SentimentModel(encoder)
    probe_good, probe_bad = "Zorbl fit again, as usual.", "Blarg slot again, as usual."
    before_good, before_bad = model.predict_one(probe_good).score, model.predict_one(probe_bad).score
    for i in range(8):
        model.learn_one(f"Zorbl fit on order {i}.", True)
        model.learn_one(f"Blarg slot on order {i}.", False)
    after_good, after_bad = model.predict_one(probe_good).score, model.predict_one(probe_bad).score
    assert after_good > before_good + 0.2
    assert after_bad < before_bad - 0.2
    assert after_good > 0 > after_bad
    assert model.n_learned == 16


def test_rating_rule() -> None:
    assert [rating_to_positive(r) for r in (5, 4, 3, 2, 1, None)] == [True, True, None, False, False, None]
    model = SentimentModel("hashing")
    text = "Zorbl fit on arrival."
    before = model.predict_one(text).score
    assert model.learn_rating(text, 3) is False and model.learn_rating(text, None) is False
    assert model.n_learned == 0 and model.predict_one(text).score == before
    assert model.learn_rating(text, 5) is True
    assert model.predict_one(text).score > before
    for _ in range(3):
        model.learn_rating(text, 1)
    assert model.predict_one(text).score < before
    assert model.n_learned == 4


@pytest.mark.parametrize("encoder", ["hashing", "minilm"])
def test_pickle_round_trip(encoder: str, minilm: SentimentModel) -> None:
    model = _fresh_minilm(minilm) if encoder == "minilm" else SentimentModel(encoder)
    model.learn_many(POSITIVE + NEGATIVE, [True, True, False, False])
    blob = pickle.dumps(model)
    assert len(blob) < 5_000_000  # the 90 MB encoder weights are not inside
    clone = pickle.loads(blob)
    probes = ["Works fine, happy with it.", "Stopped charging after a week.", "Zorbl fit."]
    for a, b in zip(model.predict_many(probes), clone.predict_many(probes)):
        assert b.score == pytest.approx(a.score, abs=1e-6) and b.label == a.label
    clone.learn_one(probes[1], False)  # the clone keeps learning on its own
    assert clone.n_learned == model.n_learned + 1


def test_batch_and_single_predictions_agree(minilm: SentimentModel) -> None:
    model = _fresh_minilm(minilm)
    model.learn_many(POSITIVE + NEGATIVE, [True, True, False, False])
    texts = ["Great sound.", "Battery died fast.", "It is a phone."]
    batch = [p.score for p in model.predict_many(texts)]
    copy = pickle.loads(pickle.dumps(model))  # same state, empty feature cache
    single = [copy.predict_one(t).score for t in texts]
    assert batch == pytest.approx(single, abs=1e-4)


def test_unknown_encoder_and_ambiguous_labels_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown encoder"):
        SentimentModel("bert-large")
    model = SentimentModel("lexicon")
    model.learn_one("fine", "positive")
    model.learn_one("bad", 0)
    for bad in ("neg", 2, None):  # truthiness would silently learn "neg" as positive
        with pytest.raises(ValueError):
            model.learn_one("x", bad)
    assert model.n_learned == 2


def test_read_labelled_splits_on_last_tab(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text('He said "great\tphone" and left.\t1\n\nBad "quote.\t0\n', encoding="utf-8")
    assert read_labelled(path) == [('He said "great\tphone" and left.', 1), ('Bad "quote.', 0)]
    path.write_text("no label here\n", encoding="utf-8")
    with pytest.raises(ValueError, match=":1:"):
        read_labelled(path)


def test_roc_auc() -> None:
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert roc_auc([0, 1, 1], [0.2, 0.2, 0.9]) == pytest.approx(0.75)


def test_prequential_hashing_on_real_file(tmp_path: Path) -> None:
    path = _head(tmp_path, "amazon_cells_labelled.txt")
    out = tmp_path / "scores.tsv"
    report = evaluate(path, lambda: SentimentModel("hashing"), out=out)
    assert report.rows == 200
    assert report.accuracy >= 0.79 and report.auc >= 0.87
    rows = out.read_text(encoding="utf-8").splitlines()
    assert rows[0].split("\t") == ["row", "label", "score", "predicted", "confidence"] and len(rows) == 201
    assert "prequential accuracy" in format_report(report)


def test_prequential_minilm_on_real_file(tmp_path: Path, minilm: SentimentModel) -> None:
    path = _head(tmp_path, "yelp_labelled.txt")
    report = evaluate(path, lambda: _fresh_minilm(minilm))
    lexicon = evaluate(path, lambda: SentimentModel("lexicon"))
    assert report.encoder == "minilm"
    assert report.accuracy >= 0.83 and report.auc >= 0.90
    assert report.accuracy > lexicon.accuracy + 0.03  # the encoder must earn its cost


def test_learned_state_restores_the_same_predictions(tmp_path: Path) -> None:
    """A worker's review model checkpoint (agents/reviews.py `Sentiment`): an image, then a delta of only the n-gram
    counts the later reviews touched, restored through the delta log into a fresh model of the same encoder."""
    from online_models.sentiment.model import LEARNED_STATE_TYPES
    from schemas.state import StateCodec
    from streams.state.deltalog import DeltaLog

    rows = read_labelled(DATA / "amazon_cells_labelled.txt")
    model = SentimentModel(encoder="hashing")
    for text, label in rows[:400]:
        model.learn_one(text, label)
    table: dict[bytes, bytes] = {}
    codec = StateCodec(LEARNED_STATE_TYPES)  # as agents/reviews.py writes it
    log = DeltaLog("s", 2, piece_entries=5_000, codec=codec)
    log.write(table, model.learned_state(), "first", image=True)
    later = rows[400:600]
    for text, label in later:
        model.learn_one(text, label)
    delta = model.learned_state([t for t, _ in later])
    assert len(delta["ngrams"]) < len(model.learned_state()["ngrams"])  # a delta, not the whole vocabulary
    log.write(table, delta, "second", image=False)

    _, found = DeltaLog.restore("s", 2, list(table.items()), piece_entries=5_000, codec=codec)
    assert found is not None and found.meta == "second"
    restored = SentimentModel(encoder="hashing")
    restored.load_learned_state(found.parts)
    assert restored.n_learned == model.n_learned == 600
    probe = [t for t, _ in rows[600:800]]
    assert [restored.predict_one(t) for t in probe] == [model.predict_one(t) for t in probe]
    with pytest.raises(ValueError, match="another encoder"):
        SentimentModel(encoder="lexicon").load_learned_state(found.parts)
