"""Every Kafka topic Wharf uses, defined once.

Input topics carry raw bytes: validation needs the original payload for the
dead-letter topic. Keys are the partitioning entity (device_id, user_id,
item_id), so one entity's events stay ordered on one partition and its state
lives on one worker; adding worker processes spreads the partitions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mode.utils.times import want_seconds

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
    """Every topic a worker subscribes to or writes besides those Faust creates itself (`faust_topics`), which
    `wharf worker` creates before Faust subscribes: a topic created after the subscription is assigned only at the
    consumer's next metadata refresh (5 minutes), so its records wait that long (the end-to-end test's catalogue
    fan-out did)."""
    return topic_names(settings) + [internal_topic_name(settings, suffix) for suffix in INTERNAL]


LEADER = "__assignor-__leader"  # Faust's `LeaderAssignor` topic: the owner of its one partition runs `on_leader` timers


def faust_topics(settings: Settings, tables: Iterable[Any]) -> dict[int, dict[str, dict[str, str]]]:
    """The topics Faust creates when a worker starts, as its `Topic.declare` makes them ({partitions: {name:
    config}}): each table's changelog (cleanup policy, retention) and the leader topic. `wharf worker` creates them
    before Faust subscribes.

    Left to Faust, they are created after the consumer took its metadata. A group leader whose metadata lacks a
    changelog assigns none of its partitions, and Faust's memory store then drops the table on recovery: a worker
    that got devices in a rebalance started their models afresh (a moved device had learned 80 of its 200
    readings; `test_two_workers_share_devices_and_state_moves_on_stop`, 3 runs of 13). Without the leader topic in
    the metadata no worker is the leader until the next refresh (5 minutes)."""
    out: dict[int, dict[str, dict[str, str]]] = {1: {internal_topic_name(settings, LEADER): {}}}
    for table in tables:
        topic = table.changelog_topic
        config = {str(k): str(v) for k, v in (topic.config or {}).items()}
        policy = [flag for flag, on in (("compact", topic.compacting), ("delete", topic.deleting)) if on]
        if policy:
            config["cleanup.policy"] = ",".join(policy)
        if topic.retention:
            config["retention.ms"] = str(int(want_seconds(topic.retention) * 1000.0))
        name = internal_topic_name(settings, f"{table.name}-changelog")  # Faust's `Collection._changelog_topic_name`
        out.setdefault(topic.partitions or settings.topic_partitions, {})[name] = config
    return out


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


@dataclass(frozen=True)
class CommerceTopics:
    """The commerce path's raw-bytes topics beside `declare`'s: created by Faust too (`internal=True`), with
    `topic_partitions` partitions, for an app started without `wharf worker` (which creates them first)."""

    catalogue: Any  # faust.Topic: settings' topic_catalogue (`POST /catalogue` writes it)
    also_viewed: Any  # settings' topic_item_also_viewed
    catalogue_fanout: Any  # internal: every catalogue change, copied to each clicks partition
    seller: Any  # internal: scored reviews re-keyed by seller
    click_sources: Any  # the recommender reads clicks and the fan-out together: partition p of each is shard p


def declare_commerce(app, settings: Settings) -> CommerceTopics:  # noqa: ANN001 - faust.App
    def raw(*names: str) -> Any:
        return app.topic(*names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
                         partitions=settings.topic_partitions, internal=True)

    fanout = raw(internal_topic_name(settings, CATALOGUE_FANOUT))
    return CommerceTopics(catalogue=raw(settings.topic_catalogue), also_viewed=raw(settings.topic_item_also_viewed),
                          catalogue_fanout=fanout, seller=raw(internal_topic_name(settings, SELLER_SENTIMENT)),
                          click_sources=raw(settings.topic_clicks, fanout.get_topic_name()))


def declare_device_sources(app, settings: Settings) -> Any:  # noqa: ANN001 - faust.App
    """The sensor path reads readings, device status and operator commands as one stream: all keyed by device_id
    with the same partition count, so partition p of each holds the same devices."""
    return app.topic(settings.topic_sensor_readings, settings.topic_device_status, settings.topic_sensor_commands,
                     key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
