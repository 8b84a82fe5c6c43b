"""Online recommender for the commerce path: learn one click at a time, recommend top-K with reasons.

See `model.py` for the signals and the per-user / per-item state layout.
"""

from online_models.recommender.config import COMPONENTS, RecommenderConfig
from online_models.recommender.model import OnlineRecommender, Ranked
from online_models.recommender.state import GlobalState, ItemState, UserState

__all__ = ["COMPONENTS", "GlobalState", "ItemState", "OnlineRecommender", "Ranked", "RecommenderConfig", "UserState"]
