"""Review text with real sentiment: templates and vocabulary chosen by the rating.

Ratings come from how well an item suits the buyer (and whether the item is in a
defective batch, which the shop simulator can switch on to provoke a
sentiment-drop alarm); the text is built from phrases whose polarity matches the
rating, with the item's category in it, negations and mixed reviews for 3 stars.
"""

from __future__ import annotations

import numpy as np

POSITIVE_OPENERS = ("Love this {cat}.", "Great {cat}, exactly as described.", "Really happy with this {cat}.",
                    "Excellent {cat} for the price.", "This {cat} is fantastic.", "Very good quality {cat}.")
POSITIVE_DETAILS = ("It arrived quickly and works perfectly.", "Solid build and easy to use.", "Would definitely buy again.",
                    "Highly recommend it to anyone.", "Better than I expected.", "Five stars, no complaints at all.",
                    "The quality is impressive.", "My family loves it too.")
NEGATIVE_OPENERS = ("Terrible {cat}.", "Very disappointed with this {cat}.", "This {cat} is junk.",
                    "Do not buy this {cat}.", "Awful {cat}, a waste of money.", "Poor quality {cat}.")
NEGATIVE_DETAILS = ("It broke after two days.", "Stopped working within a week.", "Cheap materials and it feels flimsy.",
                    "Customer service was useless.", "It arrived damaged and does not work.", "I want a refund.",
                    "Not worth the price at all.", "Worst purchase I have made this year.")
MIXED = ("The {cat} is okay, nothing special.", "Decent {cat}, but the finish could be better.",
         "Works fine, though shipping was slow.", "Not bad, not great either.", "Average {cat} for the money.")


def rating_for(fit: float, defective: bool, rng: np.random.Generator) -> int:
    """1–5 stars from how well the item fits the buyer (fit ~ N(0, 1)) and the batch quality."""
    x = 3.6 + 0.9 * fit + rng.normal(0, 0.8) - (2.8 if defective else 0.0)
    return int(np.clip(np.rint(x), 1, 5))


def review_text(rating: int, category: str, rng: np.random.Generator) -> str:
    cat = category.replace("_", " ").rstrip("s") if category.endswith("s") and not category.endswith("ss") else category.replace("_", " ")

    def pick(options: tuple[str, ...], n: int = 1) -> list[str]:
        return [options[int(i)].format(cat=cat) for i in rng.choice(len(options), size=n, replace=False)]

    if rating >= 4:
        parts = pick(POSITIVE_OPENERS) + pick(POSITIVE_DETAILS, 2 if rating == 5 else 1)
    elif rating <= 2:
        parts = pick(NEGATIVE_OPENERS) + pick(NEGATIVE_DETAILS, 2 if rating == 1 else 1)
    else:
        parts = pick(MIXED)
    return " ".join(parts)
