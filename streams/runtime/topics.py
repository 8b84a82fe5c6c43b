"""Every Kafka topic Wharf uses, defined once.

Input topics carry raw bytes: validation needs the original payload for the
dead-letter topic. Keys are the partitioning entity (device_id, user_id,
item_id), so one entity's events stay ordered on one partition and its state
lives on one worker; adding worker processes spreads the partitions.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.settings import Settings


@dataclass(frozen=True)
class TopicSpec:
    attr: str
    key: str
    description: str


SPECS: tuple[TopicSpec, ...] = (
    TopicSpec("topic_sensor_readings", "device_id", "valid SensorReading JSON from the MQTT bridge"),
    TopicSpec("topic_device_status", "device_id", "DeviceStatus JSON (birth / last will)"),
    TopicSpec("topic_anomaly_scores", "device_id", "AnomalyScore JSON, one per reading"),
    TopicSpec("topic_clicks", "user_id", "ClickEvent JSON from shop backends or POST /collect"),
    TopicSpec("topic_reviews", "item_id", "Review JSON from shop backends or POST /collect"),
    TopicSpec("topic_sentiment", "item_id", "SentimentScore JSON, one per review"),
    TopicSpec("topic_recommendations", "user_id", "Recommendation JSON snapshots"),
    TopicSpec("topic_alerts", "alarm_id", "Alert JSON: every state change of every alarm"),
    TopicSpec("topic_dead_letters", "source", "DeadLetter JSON: refused input with original bytes and reason"),
    TopicSpec("topic_sensor_commands", "device_id", "operator commands for a device's owning agent (alarm acks)"),
    TopicSpec("topic_catalogue", "item_id", "catalogue changes: an item removed or added back"),
    TopicSpec("topic_item_also_viewed", "item_id", "per-item 'also viewed' snapshots"),
)


# Internal topics of the app, named after its id like Faust's own (not settings): suffixes.
CATALOGUE_FANOUT = "commerce-catalogue-fanout"  # every catalogue change, copied to each clicks partition
SELLER_SENTIMENT = "commerce-seller-sentiment"  # scored reviews re-keyed by seller
INTERNAL = (CATALOGUE_FANOUT, SELLER_SENTIMENT)


def topic_names(settings: Settings) -> list[str]:
    return [getattr(settings, spec.attr) for spec in SPECS]


def internal_topic_name(settings: Settings, suffix: str) -> str:
    return f"{settings.app_id}-{suffix}"


def worker_topic_names(settings: Settings) -> list[str]:
    """Every topic a worker subscribes to or writes besides Faust's changelogs, which `wharf worker` creates
    before Faust subscribes: a topic created after the subscription is assigned only at the consumer's next
    metadata refresh (5 minutes), so its records wait that long (the end-to-end test's catalogue fan-out did)."""
    return topic_names(settings) + [internal_topic_name(settings, suffix) for suffix in INTERNAL]


def declare(app, settings: Settings) -> dict[str, object]:  # noqa: ANN001 - faust.App
    """Faust topic objects by settings attribute name (e.g. `topics["topic_clicks"]`)."""
    return {
        spec.attr: app.topic(
            getattr(settings, spec.attr),
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.topic_partitions,
        )
        for spec in SPECS
    }
