"""VADER lexicon prior: the cold-start signal, useful before any rated review arrives."""

from __future__ import annotations

from typing import Any

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer


class LexiconPrior:
    """VADER compound score in [-1, 1].

    The analyzer (a ~7,500-word dictionary) is rebuilt on unpickle instead of being
    stored, so a pickled model stays small.
    """

    def __init__(self) -> None:
        self._analyzer: SentimentIntensityAnalyzer | None = None

    def compound(self, text: str) -> float:
        if self._analyzer is None:
            self._analyzer = SentimentIntensityAnalyzer()
        return float(self._analyzer.polarity_scores(text)["compound"])

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._analyzer = None
