"""Online review sentiment: VADER prior + online learner, optional MiniLM encoder.

See model.py for the design and online_models/evaluation/sentiment.py for how it is measured.
"""

from online_models.sentiment.model import (
    DEFAULT_ENCODER,
    ENCODERS,
    SentimentModel,
    SentimentPrediction,
    rating_to_positive,
    to_positive,
)

__all__ = ["DEFAULT_ENCODER", "ENCODERS", "SentimentModel", "SentimentPrediction", "rating_to_positive", "to_positive"]
