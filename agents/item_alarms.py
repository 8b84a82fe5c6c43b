"""Per item and seller: hourly sentiment windows; per item: a long-run norm and its sentiment-drop alarm.

Per item (the reviews' key) and per seller (repartitioned through an internal topic keyed by seller_id) Faust
keeps hourly tumbling windows of count and score sum. An item whose last-hour mean falls
`commerce_sentiment_drop` below its long-run norm raises an `item` alarm through `online_models.alarms.AlarmBook`
(the sensor path's lifecycle) onto the alerts topic.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from online_models.alarms import STATE_TYPES as ALARM_STATE_TYPES
from online_models.alarms import AlarmBook
from schemas import codec
from schemas.events import SentimentScore, Severity, to_epoch
from schemas.state import StateCodec, StateFormatError, StateTypes
from schemas.validation import processing_error
from streams.runtime.app import app, commerce_topics, limits, settings, topics
from streams.sinks.ingest import dead_letter_event
from streams.web.registry import lent
from agents.partitions import P, as_event

log = logging.getLogger(__name__)

ITEM_ALARM_CLEAR_SECONDS = 1800.0
SENTIMENT_NORM_ALPHA = 0.02  # weight of one review in an item's long-run norm (EWMA)


def _event_ts(event: Any = None) -> float:
    """Window by the review's own time (its JSON `ts`; reviews and sentiment scores both carry it), not Kafka's.
    A review may carry an ISO-8601 `ts` (validated before this runs): read it as validation does."""
    return to_epoch(codec.loads(event.value)["ts"]) if event is not None else time.time()


item_hourly = app.Table("commerce-item-sentiment-hourly", default=lambda: [0, 0.0], partitions=P,
                        help="Per item and hour: [reviews, score sum].").tumbling(3600, expires=timedelta(days=2)).relative_to(_event_ts)
seller_hourly = app.Table("commerce-seller-sentiment-hourly", default=lambda: [0, 0.0], partitions=P,
                          help="Per seller and hour: [reviews, score sum].").tumbling(3600, expires=timedelta(days=2)).relative_to(_event_ts)
item_norms = app.Table("commerce-item-sentiment-norm", key_type=bytes, value_type=bytes, partitions=P,
                       help="Per item: long-run sentiment norm and its alarm book (state format, schemas.state).")
item_norms.key_serializer = item_norms.value_serializer = "raw"


@dataclass
class ItemNorm:
    """An item's long-run sentiment (reviews of past hours, by event time) and its alarm book."""

    hour: int = -1
    hour_n: int = 0
    hour_sum: float = 0.0
    n: int = 0
    mean: float = 0.0
    book: AlarmBook | None = None

    def fold(self, n: int, total: float) -> None:
        """Add past reviews to the norm: exact mean for the first 1/alpha, then an EWMA that follows slow drift."""
        for _ in range(n):
            self.n += 1
            w = SENTIMENT_NORM_ALPHA if self.n > 1 / SENTIMENT_NORM_ALPHA else 1.0 / self.n
            self.mean += (total / n - self.mean) * w

    def add(self, ts: float, score: float) -> None:
        hour = int(ts // 3600)
        if hour > self.hour:
            if self.hour_n:
                self.fold(self.hour_n, self.hour_sum)
            self.hour, self.hour_n, self.hour_sum = hour, 0, 0.0
        if hour < self.hour:  # a late review belongs to a past hour: it only moves the norm
            self.fold(1, score)
        else:
            self.hour_n += 1
            self.hour_sum += score


NORM_CODEC = StateCodec(StateTypes(ItemNorm) | ALARM_STATE_TYPES)
_NORM_FIELDS = {"hour": int, "hour_n": int, "hour_sum": float, "n": int, "mean": float}


def _load_norm(item_id: str, blob: bytes) -> ItemNorm:
    """An item's stored norm; a record refused (not in the state format, or not a norm) is logged and starts fresh."""
    try:
        norm = NORM_CODEC.loads(blob)
        if type(norm) is not ItemNorm or not all(type(getattr(norm, f, None)) is t for f, t in _NORM_FIELDS.items()) \
                or not (getattr(norm, "book", 0) is None or type(getattr(norm, "book", 0)) is AlarmBook):
            raise StateFormatError(f"not an ItemNorm: {type(norm).__name__}")
    except StateFormatError as exc:
        log.error("%s: state of item %r refused (%s); its norm starts fresh", item_norms.name, item_id, exc)
        return ItemNorm()
    return norm


def check_drop(norm: ItemNorm, item_id: str, ts: float) -> Any:
    """Raise or clear the item's sentiment-drop alarm (its current hour against its norm); an Alert on a change."""
    if norm.book is None:
        norm.book = AlarmBook(item_id, source_type="item", clear_after=ITEM_ALARM_CLEAR_SECONDS)
    need = settings.commerce_sentiment_min_reviews
    hour_mean = norm.hour_sum / norm.hour_n if norm.hour_n else 0.0
    drop = norm.mean - hour_mean
    if norm.hour_n >= need and norm.n >= need and drop >= settings.commerce_sentiment_drop:
        severity = Severity.CRITICAL if drop >= 1.5 * settings.commerce_sentiment_drop else Severity.MAJOR
        return norm.book.raise_("sentiment_drop", severity, ts,
                                f"last-hour sentiment {hour_mean:+.2f} over {norm.hour_n} reviews, norm {norm.mean:+.2f}",
                                {"hour_mean": round(hour_mean, 3), "hour_reviews": norm.hour_n, "norm": round(norm.mean, 3)})
    return norm.book.normal("sentiment_drop", ts)


def update_item_sentiment(event: Any, s: SentimentScore) -> Any:
    """Hourly window and norm of the review's item (its key, so its partition); returns an Alert or None."""
    with as_event(event):
        n, total = item_hourly[s.item_id].value()
        item_hourly[s.item_id] = [n + 1, total + s.score]
        key = s.item_id.encode()
        blob = item_norms.get(key)
        norm = _load_norm(s.item_id, blob) if blob else ItemNorm()
        norm.add(s.ts, s.score)
        alert = check_drop(norm, s.item_id, s.ts)
        item_norms[key] = NORM_CODEC.dumps(norm)
    return alert


@app.agent(commerce_topics.seller, name="wharf.commerce-seller-sentiment")
async def seller_sentiment(stream):  # noqa: ANN001
    """Hourly per-seller windows; keyed by seller_id, so each write is in its own partition."""
    async for event in stream.events():
        try:
            s = SentimentScore.model_validate_json(event.value)
            if not s.seller_id:
                raise ValueError("seller_id is required on the seller topic")
        except Exception as exc:  # noqa: BLE001 - a record that is not a score must not stop the worker
            await dead_letter_event(topics["topic_dead_letters"], event, processing_error("sentiment_score", "the seller windows", exc),
                                    limits=limits)
            continue
        n, total = seller_hourly[s.seller_id].value()
        seller_hourly[s.seller_id] = [n + 1, total + s.score]


def hourly(table: Any, key: str) -> dict[str, float]:
    """Current hour's reviews and mean score of an item or seller (outside a stream: wall-clock window)."""
    n, total = table[key].now()
    return {"reviews": n, "mean": total / n if n else 0.0}


lent.hourly_sentiment["item"] = lambda key: hourly(item_hourly, key)
lent.hourly_sentiment["seller"] = lambda key: hourly(seller_hourly, key)
