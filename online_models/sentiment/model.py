"""`SentimentModel`: review text -> score in [-1, 1] and a label, learning from rated reviews.

Every encoder ends in the same Bayesian online probit head (see head.py); they
differ in the features it sees:

- ``lexicon``: VADER compound + bias (a calibrated VADER; the cold-start baseline).
- ``hashing``: + log-odds of an online naive Bayes over hashed words and bigrams.
- ``minilm``:  + the 384-d all-MiniLM-L6-v2 embedding and its zero-shot polarity
  (default: the most accurate, see the evaluation in online_models/evaluation/sentiment.py).

The head's prior mean puts weight on VADER (and the zero-shot score), so an
untrained model already answers like the lexicon; labels then shift the weight
toward whatever predicts this stream's ratings best.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from online_models.sentiment.head import ProbitHead
from online_models.sentiment.lexicon import LexiconPrior
from online_models.sentiment.ngrams import NgramNaiveBayes, hashed_ngrams
from schemas.state import StateTypes

ENCODERS = ("lexicon", "hashing", "minilm")
DEFAULT_ENCODER = "minilm"
# Naive-Bayes log-odds grow with text length; tanh(x / 4) keeps the feature in
# (-1, 1) like the others, so one prior variance fits all features.
_NB_SCALE = 4.0
_CACHE_LIMIT = 4096  # texts whose fixed features are kept between precompute and learn


@dataclass(frozen=True, slots=True)
class SentimentPrediction:
    score: float  # 2 P(positive) - 1, in [-1, 1]
    label: str  # "positive" | "negative" | "neutral" (|score| <= neutral_margin)
    confidence: float  # probability of the score's sign, in [0.5, 1]


@dataclass(slots=True)
class _Static:
    """Label- and state-free features of one text: computable ahead, in batches."""

    compound: float
    ngrams: list[int]
    embedding: np.ndarray | None
    zero_shot: float


def to_positive(label: bool | int | str) -> bool:
    """Accept True/False, 1/0 or "positive"/"negative"; anything else is an error, not truthiness."""
    if isinstance(label, str):
        if label.lower() in ("positive", "negative"):
            return label.lower() == "positive"
    elif label in (0, 1):  # bool, int and numpy integers
        return bool(label)
    raise ValueError(f"label must be True/False, 1/0 or 'positive'/'negative', not {label!r}")


def rating_to_positive(rating: int | float | None) -> bool | None:
    """Rating rule from the commerce issue: >= 4 positive, <= 2 negative, 3 (or none) ignored."""
    if rating is None or (isinstance(rating, float) and math.isnan(rating)):
        return None
    if rating >= 4:
        return True
    if rating <= 2:
        return False
    return None


def _same_shape(head: ProbitHead, like: ProbitHead) -> bool:
    n = like.mean.shape[0]
    mean, cov = getattr(head, "mean", None), getattr(head, "cov", None)
    return (type(mean) is np.ndarray and mean.dtype == np.float64 and mean.shape == (n,)
            and type(cov) is np.ndarray and cov.dtype == np.float64 and cov.shape == (n, n)
            and type(getattr(head, "n_seen", None)) is int and type(getattr(head, "noise", None)) in (int, float))


# What `learned_state` holds besides plain data: the allow-list its checkpoints are decoded with (`schemas.state`).
LEARNED_STATE_TYPES = StateTypes(ProbitHead)


class SentimentModel:
    """Online sentiment scorer in River style: `predict_one` / `learn_one`, picklable."""

    def __init__(
        self,
        encoder: str = DEFAULT_ENCODER,
        *,
        neutral_margin: float = 0.2,
        prior_variance: float = 1.0,
        lexicon_weight: float = 1.0,
        zero_shot_weight: float = 0.5,
        n_features: int = 2**18,
        device: str | None = "cpu",
        batch_size: int = 32,
    ) -> None:
        if encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {encoder!r}; expected one of {', '.join(ENCODERS)}")
        self.encoder = encoder
        self.neutral_margin = neutral_margin
        self.n_features = n_features
        self._lexicon = LexiconPrior()
        self._nb = NgramNaiveBayes() if encoder != "lexicon" else None
        self._minilm = None
        prior = [lexicon_weight]  # compound
        if encoder == "minilm":
            from online_models.sentiment.encoder import EMBEDDING_DIM, MiniLMEncoder

            self._minilm = MiniLMEncoder(device=device, batch_size=batch_size)
            prior = [0.0] * EMBEDDING_DIM + prior + [zero_shot_weight]
        if self._nb is not None:
            prior.append(0.0)  # n-gram log-odds
        prior.append(0.0)  # bias
        self._head = ProbitHead(np.array(prior), np.full(len(prior), prior_variance))
        self._cache: dict[str, _Static] = {}

    @property
    def n_learned(self) -> int:
        return self._head.n_seen

    # -- features --------------------------------------------------------------
    def precompute(self, texts: Sequence[str]) -> None:
        """Compute the fixed (label-free, state-free) features of `texts` in one batch.

        The following `predict_one` / `learn_one` calls on these texts reuse them,
        so a consumer can batch the MiniLM forward pass and still predict and
        learn strictly one review after another.
        """
        wanted = list(dict.fromkeys(texts))
        if len(self._cache) + len(wanted) > _CACHE_LIMIT:
            self._cache = {t: self._cache[t] for t in wanted if t in self._cache}
        missing = [t for t in wanted if t not in self._cache]
        emb, zero = (None, None)
        if self._minilm is not None and missing:
            emb, zero = self._minilm.encode_many(missing)
        for i, text in enumerate(missing):
            self._cache[text] = _Static(
                compound=self._lexicon.compound(text),
                ngrams=hashed_ngrams(text, self.n_features) if self._nb is not None else [],
                embedding=None if emb is None else emb[i],
                zero_shot=0.0 if zero is None else float(zero[i]),
            )

    def _static(self, text: str) -> _Static:
        if text not in self._cache:
            self.precompute([text])
        return self._cache[text]

    def _vector(self, s: _Static) -> np.ndarray:
        parts: list[float] = [s.compound]
        if self._minilm is not None:
            parts.append(s.zero_shot)
        if self._nb is not None:
            parts.append(math.tanh(self._nb.log_odds(s.ngrams) / _NB_SCALE))
        parts.append(1.0)
        if s.embedding is None:
            return np.array(parts)
        return np.concatenate([s.embedding, parts])

    # -- River-style API ---------------------------------------------------------
    def predict_one(self, text: str) -> SentimentPrediction:
        p = self._head.predict_proba(self._vector(self._static(text)))
        score = 2.0 * p - 1.0
        if score > self.neutral_margin:
            label = "positive"
        elif score < -self.neutral_margin:
            label = "negative"
        else:
            label = "neutral"
        return SentimentPrediction(score=score, label=label, confidence=max(p, 1.0 - p))

    def predict_many(self, texts: Sequence[str]) -> list[SentimentPrediction]:
        """Predictions for a batch (one MiniLM forward pass), all from the current state."""
        self.precompute(texts)
        return [self.predict_one(t) for t in texts]

    def learn_one(self, text: str, positive: bool | int | str) -> None:
        """Learn one labelled review (True / 1 / "positive", or False / 0 / "negative")."""
        target = to_positive(positive)
        s = self._static(text)
        self._head.learn(self._vector(s), target)
        if self._nb is not None:
            self._nb.learn(s.ngrams, target)

    def learn_many(self, texts: Sequence[str], positives: Iterable[bool | int | str]) -> None:
        self.precompute(texts)
        for text, positive in zip(texts, positives, strict=True):
            self.learn_one(text, positive)

    def learn_rating(self, text: str, rating: int | float | None) -> bool:
        """Learn from a star rating (>= 4 positive, <= 2 negative); returns False when ignored."""
        positive = rating_to_positive(rating)
        if positive is None:
            return False
        self.learn_one(text, positive)
        return True

    # -- checkpoints: what learning changed, without the encoders' weights --------------------------------
    def learned_state(self, since: Iterable[str] | None = None) -> dict[str, dict[Any, Any]]:
        """The learned state as named parts of entries (`streams.state.deltalog` writes them): the head and the n-gram
        counts, all of them, or with `since` (the texts learned since the last call) only the counts those touched.
        It restores into a model of the same encoder (`load_learned_state`)."""
        parts: dict[str, dict[Any, Any]] = {"head": {"head": self._head}}
        nb = self._nb
        if nb is not None:
            neg, pos = nb.counts
            keys = neg.keys() | pos.keys() if since is None else {h for t in since for h in hashed_ngrams(t, self.n_features)}
            parts["ngrams"] = {h: (neg.get(h, 0.0), pos.get(h, 0.0)) for h in keys}
            parts["ngram_totals"] = {"totals": (tuple(nb.totals), nb.vocabulary)}
        return parts

    def load_learned_state(self, parts: dict[str, dict[Any, Any]]) -> None:
        """Continue from a checkpoint (`learned_state`, its deltas merged over its image): predictions come out
        as they did when it was taken.

        The checkpoint comes from outside the process: anything not shaped like this model's state raises ValueError
        and leaves the model as it was."""
        head = parts.get("head", {}).get("head") if type(parts.get("head")) is dict else None
        if type(head) is not ProbitHead or not _same_shape(head, self._head):
            raise ValueError(f"checkpoint is of another encoder than {self.encoder!r} (or has no probit head of its shape)")
        if (self._nb is not None) != ("ngram_totals" in parts):
            raise ValueError(f"checkpoint is of another encoder than {self.encoder!r}")
        nb = None
        if self._nb is not None:
            nb = NgramNaiveBayes(self._nb.alpha)
            ngrams, totals = parts.get("ngrams", {}), parts["ngram_totals"].get("totals")
            if type(ngrams) is not dict or type(totals) is not tuple or len(totals) != 2 or type(totals[1]) is not int \
                    or type(totals[0]) is not tuple or len(totals[0]) != 2 or not all(type(t) is float for t in totals[0]):
                raise ValueError("checkpoint's n-gram counts are malformed")
            for h, counts in ngrams.items():
                if type(h) is not int or type(counts) is not tuple or len(counts) != 2 or not all(type(c) is float for c in counts):
                    raise ValueError("checkpoint's n-gram counts are malformed")
                neg, pos = counts
                if neg:
                    nb.counts[0][h] = neg
                if pos:
                    nb.counts[1][h] = pos
            nb.totals, nb.vocabulary = list(totals[0]), totals[1]
        self._head = head
        if nb is not None:
            self._nb = nb

    # -- pickling: drop the feature cache (encoder and lexicon drop their own weights)
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = {}
        return state

    def __repr__(self) -> str:
        return f"SentimentModel(encoder={self.encoder!r}, n_learned={self.n_learned})"
