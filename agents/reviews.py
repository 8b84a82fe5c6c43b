"""Review sentiment: the review model, its checkpoints, and the agent that scores reviews.

Reviews (keyed by item_id) are validated (invalid ones dead-lettered), scored in
batches (one MiniLM forward pass per batch, in a thread), learned in order from their
rating (>= 4 positive, <= 2 negative), stored in `reviews` exactly once and produced to
the sentiment topic, and to the seller topic for the seller windows (`agents/item_alarms.py`).
The model's checkpoints are a delta log (`streams/state/deltalog.py`) in the `commerce-sentiment-model` table.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from online_models.sentiment.model import LEARNED_STATE_TYPES
from schemas import codec, rows
from schemas.events import Review, SentimentScore
from schemas.state import StateCodec
from schemas.validation import processing_error
from streams.runtime import counts
from streams.runtime.acks import OrderedAcker
from streams.runtime.app import app, commerce_topics, limits, settings, storage, topics
from streams.sinks.ingest import produce_dead_letter, valid_or_dead_letter
from streams.state.checkpoint import Checkpoint, Marks
from streams.state.deltalog import DeltaLog
from streams.web.registry import lent
from agents.item_alarms import update_item_sentiment
from agents.partitions import P, as_event, entries_of

log = logging.getLogger(__name__)

REVIEW_BATCH = 64


SENTIMENT_LOG_PREFIX = "s"  # review model checkpoints in their table: s/{partition}/{generation}/{seq}/{chunk|c}
SENTIMENT_STATE_VERSION = 2  # 2: state format (schemas.state); 1: pickled
SENTIMENT_CODEC = StateCodec(LEARNED_STATE_TYPES)
SENTIMENT_PIECE_ENTRIES = 5_000  # n-gram counts are small entries: 5,000 to a table record, not 50

sentiment_table = app.Table("commerce-sentiment-model", key_type=bytes, value_type=bytes, partitions=P,
                            help="The review model's learned state (head, n-gram counts) with the review offsets it "
                                 "includes: a delta log (streams.state.deltalog) under one reviews partition of its worker.")
sentiment_table.key_serializer = sentiment_table.value_serializer = "raw"


class Sentiment:
    """The review model of this worker, built on first use (MiniLM takes seconds to load), and its checkpoints.

    One model per worker learns from the reviews of every partition it owns. After each batch, before the batch's
    reviews are handed to the writer (so before any is acked), what it learned goes to the log of one owned
    partition (the lowest with an event). A restarted or rebalanced worker adopts the most learned checkpoint it
    finds under its partitions whose marker covers every review its own model has learned (so adopting it loses
    nothing, and no review is in the model twice), if it knows more than its own model. A review at or below the
    model's marker (`marks`: restored with a checkpoint or learned since) is not learned again: a review is learned
    once, also when Kafka delivers it again within one run (`streams/runtime/flow.py`). The durability protocol is
    the one every stateful agent shares (`streams/state/checkpoint.py`), with a checkpoint after every batch."""

    def __init__(self, encoder: str, table: Any = None) -> None:
        self.encoder = encoder
        self.table = sentiment_table if table is None else table  # the log table (a plain dict in unit tests)
        self._model: Any = None
        self.scored = 0
        self.learned = 0
        self.skipped = 0  # reviews delivered again that the model holds already (restored or learned in this run)
        self.alerts = 0
        self.marks = Marks()  # the reviews the model includes, per partition (in checkpoints as {partition: offset})
        self.ckpt = Checkpoint("sentiment")  # a review is acked once stored and in a checkpoint
        self.logs: dict[int, DeltaLog] = {}  # owned partitions' checkpoint logs, as found in the table
        self.last: dict[int, Any] = {}  # owned partition -> its latest event (the context of a write there)
        self.written_to: int | None = None  # the log of the last checkpoint: deltas go there, elsewhere an image
        self.since: list[str] = []  # texts learned since the last checkpoint (the n-gram counts they changed)
        self.checkpoints = 0
        self.restored = 0  # reviews the adopted checkpoints included

    @property
    def model_learned(self) -> int:
        """Reviews the model has learned, restored ones included (without building the model)."""
        return self._model.n_learned if self._model is not None else 0

    def restore(self, partitions: set[int]) -> None:
        """Read the checkpoint logs of newly owned partitions; adopt the most learned one if it knows more."""
        wanted = partitions - self.logs.keys()
        if not wanted:
            return
        entries = entries_of(self.table, wanted)
        best: tuple[int, int, dict, Any] | None = None
        for p in sorted(wanted):
            self.logs[p], found = DeltaLog.restore(SENTIMENT_LOG_PREFIX, p, entries[p], piece_entries=SENTIMENT_PIECE_ENTRIES,
                                                   codec=SENTIMENT_CODEC)
            for problem in self.logs[p].refused:
                log.error("%s: record refused in the review model's checkpoint log %d: %s", sentiment_table.name, p, problem)
            if found is None:
                continue
            meta = found.meta
            if type(meta) is not tuple or len(meta) != 4 or type(meta[2]) is not int or type(meta[3]) is not dict \
                    or not all(type(k) is int and type(v) is int for k, v in meta[3].items()):
                log.error("%s: checkpoint under partition %d has no valid metadata; not used", sentiment_table.name, p)
                continue
            version, encoder, n_learned, through = meta
            if version != SENTIMENT_STATE_VERSION or encoder != self.encoder:
                log.warning("review model checkpoint under partition %d is of encoder %r (version %s), not %r: not used",
                            p, encoder, version, self.encoder)
                continue
            if not _marks_of(through).covers(self.marks.applied):
                log.warning("review model checkpoint under partition %d (through %s) lacks reviews the model has learned "
                            "(through %s): not used", p, through, self.marks.applied)
                continue
            if best is None or n_learned > best[0]:
                best = (n_learned, p, through, found.parts)
        if best is not None and best[0] > (before := self.model.n_learned):
            n_learned, p, through, parts = best
            try:
                self.model.load_learned_state(parts)
            except ValueError as exc:
                log.error("%s: checkpoint under partition %d refused (%s); the model goes on without it",
                          sentiment_table.name, p, exc)
                return
            self.marks = _marks_of(through)
            self.written_to, self.since = None, []
            self.restored += n_learned - before  # what it added: `learned` counts the model's own reviews it includes
            log.info("review model restored from partition %d: %d reviews learned, through offsets %s", p, n_learned, through)

    def forget(self, partitions: set[int]) -> None:
        for p in partitions:
            self.logs.pop(p, None)
            self.last.pop(p, None)
            if self.written_to == p:
                self.written_to = None

    def learn(self, partition: int, offset: int, review: Review) -> None:
        """Learn a review from its rating, unless the model holds it already (restored or learned in this run)."""
        if self.marks.holds(settings.topic_reviews, partition, offset):
            self.skipped += 1
            return
        self.marks.apply(settings.topic_reviews, partition, offset)
        if self.model.learn_rating(review.text, review.rating):
            self.learned += 1
            self.since.append(review.text)

    def checkpoint(self, owned: set[int]) -> int:
        """Write what was learned since the last checkpoint; returns the table records written. Only under a partition
        this worker owns (`owned`): another worker may write its own log there (a rebalance under way)."""
        candidates = self.last.keys() & self.logs.keys() & owned
        if not self.since or not candidates:
            return 0
        p = min(candidates)
        log_ = self.logs[p]
        image = p != self.written_to or log_.needs_image()
        parts = self.model.learned_state(None if image else self.since)
        meta = (SENTIMENT_STATE_VERSION, self.encoder, self.model.n_learned, {p: o for (_, p), o in self.marks.applied.items()})
        with as_event(self.last[p]):
            written = log_.write(self.table, parts, meta, image)
        self.written_to, self.since = p, []
        self.checkpoints += 1
        return written

    @property
    def model(self) -> Any:
        if self._model is None:
            import torch

            from online_models.sentiment import SentimentModel

            torch.set_num_threads(1)  # one core per worker; the other belongs to Kafka and ClickHouse
            self._model = SentimentModel(encoder=self.encoder)
        return self._model


def _marks_of(through: dict[int, int]) -> Marks:
    """A checkpoint's marker ({reviews partition: last offset}) as restored `Marks`."""
    marks = Marks()
    for partition, offset in through.items():
        marks.restore(partition, {settings.topic_reviews: offset})
    return marks


sentiment = Sentiment(settings.commerce_sentiment_encoder)


def score_reviews(reviews: Sequence[tuple[Any, Review]]) -> list[SentimentScore | Exception]:
    """Predict each review, then learn it from its rating, strictly in order (features were batched). A review the
    model fails on gets its error in its place (the caller dead-letters it): one text must not stop the path."""
    model = sentiment.model
    out: list[SentimentScore | Exception] = []
    for event, r in reviews:
        try:
            pred = model.predict_one(r.text)
            out.append(SentimentScore(ts=r.ts, review_id=r.review_id, user_id=r.user_id, item_id=r.item_id, seller_id=r.seller_id,
                                      rating=r.rating, score=max(-1.0, min(1.0, pred.score)), label=pred.label,
                                      model=sentiment.encoder, text=r.text))
            sentiment.learn(event.message.partition, event.message.offset, r)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.exception("review at %s/%d/%d broke the review model; dead-lettered", event.message.topic,
                          event.message.partition, event.message.offset)
            out.append(exc)
    sentiment.scored += sum(isinstance(x, SentimentScore) for x in out)
    return out


def owned_review_partitions() -> set[int]:
    return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == settings.topic_reviews}


@app.agent(topics["topic_reviews"], name="wharf.commerce-sentiment")
async def score_review_stream(stream):  # noqa: ANN001
    writer = storage.writer("reviews", settings.topic_reviews)
    acker = OrderedAcker()
    async for events in stream.noack_take(REVIEW_BATCH, within=0.2):
        counts.records["reviews"] += len(events)
        valid: list[tuple[Any, Any, Review]] = []
        for event in events:
            done = acker.track(event)
            review = await valid_or_dead_letter(event, Review, dlq_topic=topics["topic_dead_letters"], limits=limits)
            if review is None:
                done()
            else:
                valid.append((event, done, review))
        if not valid:
            continue
        if sentiment._model is None:  # torch's import and the encoder's load: seconds of CPU, off the event loop
            await asyncio.to_thread(lambda: sentiment.model)
        owned = owned_review_partitions()
        for event, _done, _r in valid:
            sentiment.last[event.message.partition] = event
        sentiment.restore(owned)
        texts = [r.text for _, _, r in valid]
        model = sentiment.model
        await asyncio.to_thread(model.precompute, texts)  # the MiniLM forward pass, off the event loop
        scores = score_reviews([(event, r) for event, _, r in valid])
        stored = [sentiment.ckpt.hold(event.message.partition, done) for event, done, _r in valid]
        await sentiment.ckpt.commit(lambda _cut: _checkpoint(owned))  # what the model learned, before any ack
        futs = []
        for (event, _done, _r), s in zip(valid, scores, strict=True):
            if isinstance(s, Exception):
                m = event.message
                futs.append(await produce_dead_letter(topics["topic_dead_letters"], processing_error("review", "the review model", s, m.value),
                                                      m.value, "kafka", keep_bytes=limits.dead_letter_keep_bytes, kafka_topic=m.topic,
                                                      kafka_partition=m.partition, kafka_offset=m.offset))
                continue
            value = codec.dumps(s)
            futs.append(await topics["topic_sentiment"].send(key=s.item_id.encode(), value=value))
            if s.seller_id:
                futs.append(await commerce_topics.seller.send(key=s.seller_id.encode(), value=value))
            alert = update_item_sentiment(event, s)
            if alert is not None:
                sentiment.alerts += 1
                futs.append(await topics["topic_alerts"].send(key=alert.alarm_id.encode(), value=codec.dumps(alert)))
        await asyncio.gather(*futs)  # Kafka has the scores and alerts before the reviews are acked
        for (event, _done, _r), s, stored_ in zip(valid, scores, stored, strict=True):
            if isinstance(s, Exception):
                stored_()  # its dead letter is confirmed above
            else:
                await writer.put(event.message.partition, event.message.offset, rows.review(s), stored_)


async def _checkpoint(owned: set[int]) -> set[int] | None:
    """The review model's write (a Faust table: its changelog is flushed before any offset is committed). What it
    learned is in one log, so every partition's reviews are acked; none when no owned log could take it (all
    revoked meanwhile): the new owners get them again."""
    sentiment.checkpoint(owned)
    return set() if sentiment.since else None


@app.on_partitions_revoked.connect
async def _forget_revoked_logs(app_: Any, revoked: set, **kwargs: Any) -> None:
    """A revoked reviews partition's checkpoint log belongs to its new owner."""
    gone = {tp.partition for tp in revoked if tp.topic == settings.topic_reviews}
    sentiment.forget(gone)
    sentiment.ckpt.forget(gone)




async def _stats() -> dict[str, Any]:
    """`/commerce/stats`' review part."""
    return {"sentiment": {"encoder": sentiment.encoder, "scored": sentiment.scored, "learned": sentiment.learned,
                          "model_learned": sentiment.model_learned, "restored": sentiment.restored, "skipped": sentiment.skipped,
                          "checkpoints": sentiment.checkpoints, "alerts": sentiment.alerts}}


lent.commerce_stats["sentiment"] = _stats
