"""Hashed word + bigram features and an online naive-Bayes log-odds scorer over them.

The scorer learns shop-specific vocabulary ("returned it", "5 stars", product
names) that neither VADER nor a frozen encoder knows; its log-odds is fed as one
feature to the model's head, which learns how far to trust it.
"""

from __future__ import annotations

import math
import re
import zlib

_TOKEN = re.compile(r"[a-z0-9']+")


def hashed_ngrams(text: str, n_features: int = 2**18) -> list[int]:
    """Distinct hashed unigrams and bigrams of a lower-cased text.

    crc32 (not `hash`) so that indices are stable across processes and pickles.
    """
    words = _TOKEN.findall(text.lower())
    grams = set(words)
    grams.update(f"{a} {b}" for a, b in zip(words, words[1:]))
    return sorted({zlib.crc32(g.encode()) % n_features for g in grams})


class NgramNaiveBayes:
    """Multinomial naive Bayes on binary hashed n-grams, learned one review at a time.

    `log_odds` leaves out the class prior: the head's bias term learns that.
    """

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = alpha
        self.counts: tuple[dict[int, float], dict[int, float]] = ({}, {})
        self.totals = [0.0, 0.0]
        self.vocabulary = 0

    def log_odds(self, features: list[int]) -> float:
        if not features or self.vocabulary == 0:
            return 0.0
        neg, pos = self.counts
        a, v = self.alpha, self.vocabulary
        norm = math.log((self.totals[0] + a * v) / (self.totals[1] + a * v))
        return sum(math.log((pos.get(h, 0.0) + a) / (neg.get(h, 0.0) + a)) + norm for h in features)

    def learn(self, features: list[int], positive: bool) -> None:
        side = self.counts[int(positive)]
        other = self.counts[1 - int(positive)]
        for h in features:
            if h not in side and h not in other:
                self.vocabulary += 1
            side[h] = side.get(h, 0.0) + 1.0
        self.totals[int(positive)] += len(features)
