"""The one settings object.

Every knob lives here, read from `WHARF_*` environment variables and, below them,
from an optional TOML file (`WHARF_CONFIG`, default `wharf.toml` in the working
directory). docs/settings.md's table is generated from this class
(`python -m wharf.settingsdoc`), so it cannot drift from the code.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


EVERY_INTERFACE = frozenset({"0.0.0.0", "::", ""})  # bind addresses that mean every interface


def _config_file() -> Path:
    return Path(os.environ.get("WHARF_CONFIG", "wharf.toml"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WHARF_", extra="ignore", validate_default=True)

    # --- where things live -------------------------------------------------
    state_dir: Path = Field(Path(".wharf"), description="Folder for all local state: service data, logs, pid files, chdb data.")
    cache_dir: Path = Field(Path.home() / ".cache" / "wharf", description="Download cache (Kafka jars from Maven Central).")

    # --- Kafka ---------------------------------------------------------------
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers (comma separated host:port).")
    kafka_controller_port: int = Field(9093, description="KRaft controller port of the local Kafka started by `wharf infra up`.")
    kafka_heap: str = Field("512m", description="-Xmx of the local Kafka broker.")
    kafka_security: Literal["plaintext", "sasl_scram"] = Field(
        "plaintext", description="`sasl_scram`: every Kafka client logs in with SCRAM-SHA-512 as WHARF_KAFKA_USER, and the local Kafka has "
        "a SASL listener, ACLs and no unauthenticated access (`wharf/infra/kafka_security.py`)."
    )
    kafka_user: str = Field("wharf", description="Kafka user of Wharf's clients (with `sasl_scram`): may use Wharf's topics and groups only.")
    kafka_password: SecretStr = Field(
        SecretStr(""), description="Password of WHARF_KAFKA_USER. Empty: the one `wharf infra up` generated (SECRETS_DIR/kafka-password)."
    )
    topic_partitions: int = Field(8, ge=1, description="Partitions of every Wharf topic (the unit of scale-out).")
    kafka_session_timeout_seconds: float = Field(
        30.0, ge=6, le=300, description="A worker that stops heartbeating (crashed) loses its partitions to the others after this long."
    )
    kafka_fetch_max_wait_ms: int = Field(
        20, ge=1, le=1500, description="How long the broker may hold a worker's fetch while it has fewer than `kafka_fetch_min_bytes` for it (Faust fixes 1,500; `streams/runtime/fetchwait.py`): the most a record waits in Kafka for the worker's next fetch."
    )
    kafka_fetch_min_bytes: int = Field(
        65536, ge=1, le=1 << 20, description="How many bytes the broker gathers for a worker's fetch before it answers early. At 1 it answers each arrival, and a worker fetched 185-245 times a second at 1,000 and at 5,000 readings/s, each fetch naming every assigned partition, encoded and decoded in Python (`streams/runtime/fetchwait.py`)."
    )
    faust_fast_dispatch: bool = Field(
        True, description="Deliver fetched records to the agents without Faust's per-record rebalance guard when no delivery can block (`streams/runtime/fastpath.py`; about 2x a bare agent's rate)."
    )
    loop_stall_ms: float = Field(
        100.0, gt=0, description="A worker's event loop held longer than this is a stall: counted, and the longest kept with the stacks it was seen in (`GET /stats` loop)."
    )

    # Topic names: declared once in streams/runtime/topics.py, named here.
    topic_sensor_readings: str = Field("wharf.sensor.readings", description="Valid telemetry from the MQTT bridge, keyed by device_id.")
    topic_device_status: str = Field("wharf.sensor.status", description="Device birth / last-will messages, keyed by device_id.")
    topic_anomaly_scores: str = Field("wharf.sensor.anomaly-scores", description="Per-reading anomaly scores, keyed by device_id.")
    topic_clicks: str = Field("wharf.shop.clicks", description="Click events, keyed by user_id.")
    topic_reviews: str = Field("wharf.shop.reviews", description="Product reviews, keyed by item_id.")
    topic_sentiment: str = Field("wharf.shop.sentiment", description="Scored reviews, keyed by item_id.")
    topic_recommendations: str = Field("wharf.shop.recommendations", description="Top-K snapshots, keyed by user_id.")
    topic_alerts: str = Field("wharf.alerts", description="Alarm lifecycle events for alerting consumers, keyed by alarm id.")
    topic_dead_letters: str = Field("wharf.dead-letters", description="Invalid input with its original bytes and the reason.")

    # --- MQTT ----------------------------------------------------------------
    mqtt_host: str = Field("127.0.0.1", description="Mosquitto host.")
    mqtt_port: int = Field(1883, description="Mosquitto port.")
    mqtt_bridge_user: str = Field("wharf-bridge", description="MQTT user of the bridge (reads all telemetry, writes alerts).")
    mqtt_bridge_password: SecretStr = Field(
        SecretStr(""), description="Password of the bridge's MQTT user. Empty: the one `wharf infra up` generated (SECRETS_DIR/mqtt-bridge-password)."
    )
    mqtt_devices: SecretStr = Field(
        SecretStr(""),
        description="Device credentials, `id:password` comma separated, over those generated for the registered devices (SECRETS_DIR/mqtt-devices).",
    )

    # --- ClickHouse ----------------------------------------------------------
    clickhouse_url: str = Field(
        "chdb://",
        description="`chdb://` (embedded, data in STATE_DIR/chdb), `chdb:///abs/path`, or `clickhouse://user:pass@host:port/db` (native protocol).",
    )
    clickhouse_server_tcp_port: int = Field(19000, description="Native port of the local ClickHouse server (`wharf infra up --services clickhouse`).")
    clickhouse_server_http_port: int = Field(18123, description="HTTP port of the local ClickHouse server.")

    # --- sink ----------------------------------------------------------------
    sink_batch_rows: int = Field(10_000, ge=1, description="Rows per ClickHouse insert (flush when reached).")
    sink_batch_seconds: float = Field(1.0, gt=0, description="Longest time a row waits in the writer before its batch is flushed.")
    sink_max_pending_rows: int = Field(100_000, ge=1, description="Rows the writer holds before it blocks its producer (backpressure).")
    sink_retry_max_seconds: float = Field(30.0, gt=0, description="Cap of the writer's exponential retry backoff while ClickHouse is down.")

    # --- validation ----------------------------------------------------------
    max_payload_bytes: int = Field(64 * 1024, ge=256, description="Largest accepted event payload.")
    max_future_skew_seconds: float = Field(300.0, ge=0, description="Events stamped further in the future than this are invalid.")
    max_past_age_seconds: float = Field(7 * 24 * 3600.0, ge=0, description="Events older than this are invalid.")
    dead_letter_keep_bytes: int = Field(64 * 1024, ge=0, le=512 * 1024, description="A dead letter keeps at most this prefix of the refused bytes (with their size and SHA-256): it always fits a Kafka record.")
    dead_letter_ttl_days: float = Field(30.0, ge=0, description="Dead letters older than this are deleted from ClickHouse (hourly); 0 keeps them forever.")

    # --- Faust worker --------------------------------------------------------
    app_id: str = Field("wharf", description="Faust app id (Kafka consumer group and changelog prefix).")
    web_port: int = Field(6066, description="Port of the Faust worker's web server.")
    web_host: str = Field("127.0.0.1", description="Bind address of the Faust worker's web server (0.0.0.0: every interface).")
    web_advertised_host: str = Field(
        "", description="Host or address at which other workers reach this worker's web server: Faust forwards a request "
        "for a user to the worker that owns the user's partition there. Empty: WHARF_WEB_HOST, or, when that binds every "
        "interface, this machine's address on its route to Kafka."
    )
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop", description="Event loop of the worker and the bridge: uvloop (libuv; a recommendation request cost the worker about 12 % less CPU, measured) or asyncio's own."
    )

    # --- sensor path -----------------------------------------------------------
    topic_sensor_commands: str = Field("wharf.sensor.commands", description="Operator commands for the device owners (alarm acks), keyed by device_id.")
    sensor_rules: str = Field(
        "",
        description='Rule thresholds per device type as JSON, merged over the built-in ones, e.g. `{"cold_room": {"temperature": {"min": 2, "max": 8}}}`.',
    )
    sensor_model_options: str = Field("", description='DeviceAnomalyModel options as JSON, e.g. `{"use_forecaster": false}` for more throughput.')
    sensor_checkpoint_seconds: float = Field(30.0, gt=0, description="Interval of model and alarm checkpoints to the state changelog (also taken when partitions move).")
    sensor_alarm_clear_seconds: float = Field(60.0, ge=0, description="An alarm clears once its condition has been normal this long (event time).")
    sensor_silence_factor: float = Field(5.0, gt=1, description="A device is silent after this many times its usual reporting interval without telemetry.")
    sensor_anomaly_probation: int = Field(750, ge=0, description="A device's first readings on which the learned model raises no anomaly alarm (rules, flatline and silence still alarm): its calibration has not yet seen the device's normal recurring events. NAB does not score a detector's first 15 % of a series (at most 750 rows) either.")
    sensor_stuck_readings: int = Field(30, ge=3, description="Identical consecutive values of a metric that used to vary that make it flatlined (stuck).")
    sensor_dedup_window: int = Field(50_000, ge=100, description="Recent reading keys (device_id, seq, ts) remembered per partition to drop MQTT redeliveries.")
    sensor_max_metrics_per_device: int = Field(32, ge=1, le=1024, description="Metric names one device's model tracks; further names are stored with the reading but not modelled (bounded state per device).")
    sensor_publish_scores: bool = Field(False, description="Also produce every AnomalyScore to the anomaly-scores topic (ClickHouse always gets them).")

    # --- commerce path ---------------------------------------------------------
    topic_catalogue: str = Field("wharf.shop.catalogue", description="Catalogue changes (item removed / re-added), keyed by item_id.")
    topic_item_also_viewed: str = Field("wharf.shop.also-viewed", description="Per-item 'also viewed' snapshots (feeds the item_also_viewed table), keyed by item_id.")
    commerce_action_weights: str = Field("", description='Implicit-feedback weight per click action as JSON, merged over the recommender\'s defaults, e.g. `{"purchase": 8}`.')
    commerce_half_life_scale: float = Field(1.0, gt=0, description="Multiplies every half-life (decay), the session gap and the idle ages of the recommender.")
    commerce_k: int = Field(10, ge=1, le=200, description="Default number of recommendations per request and per snapshot.")
    commerce_snapshot_seconds: float = Field(60.0, gt=0, description="Interval of the top-K (active users) and 'also viewed' (active items) snapshots to ClickHouse.")
    commerce_batch_seconds: float = Field(0.05, gt=0, description="Longest wait of the recommender agent for a batch of clicks.")
    commerce_checkpoint_seconds: float = Field(5.0, gt=0, description="Interval of recommender checkpoints (changed users/items to the table changelog); clicks are acked after the checkpoint that includes them.")
    commerce_learners: int = Field(1, ge=1, le=64, description="Processes that learn the recommender's shards beside the worker's event loop (partition p in learner p mod n); one more core each.")
    commerce_max_users: int = Field(50_000, ge=1, description="Users a recommender shard (clicks partition) keeps; past it the least recently seen one (event time) is evicted, from memory and checkpoints.")
    commerce_max_items: int = Field(20_000, ge=1, description="Items a recommender shard keeps, catalogue items included; past it the least recently seen are evicted, a 32nd of it at a time.")
    commerce_user_idle_days: float = Field(90.0, ge=0, description="A user not seen for this many days (event time) is evicted from the recommender (0: never).")
    commerce_item_idle_days: float = Field(365.0, ge=0, description="An item neither clicked nor registered for this many days (event time) is evicted from the recommender (0: never).")
    commerce_sentiment_encoder: str = Field("minilm", description="Review sentiment encoder: `minilm` (most accurate), `hashing` or `lexicon` (fast, no model weights).")
    commerce_sentiment_drop: float = Field(0.5, gt=0, le=2, description="Sentiment-drop alarm: an item's last-hour mean score this far below its long-run norm raises an alarm.")
    commerce_sentiment_min_reviews: int = Field(5, ge=1, description="Reviews an item needs in the hour (and before it, for its norm) for the sentiment-drop alarm.")
    commerce_collector_max_bytes: int = Field(1_048_576, ge=1024, description="Largest accepted `POST /collect` body.")
    commerce_collector_max_events: int = Field(1000, ge=1, description="Most events in one `POST /collect` batch.")

    # --- secrets and transport (schemas/secrets.py, wharf/infra/tls.py) ---------------
    secrets_dir: str = Field("", description="Folder of the per-install secrets that `wharf infra up` generates (0700, files 0600). Empty: STATE_DIR/secrets.")
    clickhouse_password: SecretStr = Field(
        SecretStr(""), description="Password of `default` on the local ClickHouse server (`wharf infra up` sets it), added to WHARF_CLICKHOUSE_URL when that names the local server without one. Empty: SECRETS_DIR/clickhouse-password."
    )
    mqtt_device_registry: str = Field(
        "", description="Site and zone of each device, `id=site/zone` comma separated (`+`: any, for test devices), over the file STATE_DIR/devices. "
        "A device may publish only on `wharf/<site>/<zone>/<id>/telemetry|status`; an unregistered one on nothing."
    )
    mqtt_bridge_port: int = Field(
        1884, description="Mosquitto listener of Wharf's own clients (bridge, alert publisher): only the bridge user logs in there. "
        "On the device listeners the client id is the user name, so no device can take over the bridge's session."
    )
    bridge_processes: int = Field(
        1, ge=1, le=64, description="Processes `wharf bridge` runs in the shared subscription, one core each; the first keeps the client id, "
        "the others are `<id>-2`, `<id>-3`, ... (each its own persistent session; see docs/operations.md before lowering it)."
    )
    bridge_metrics_port: int = Field(0, ge=0, le=65535, description="Port of the bridge's Prometheus `/metrics` (received, forwarded, dead-lettered, in flight); 0: not served. With several bridge processes the i-th (from 0) serves on this port + i. It has no credential: see WHARF_BRIDGE_METRICS_HOST.")
    bridge_metrics_host: str = Field("127.0.0.1", description="Bind address of the bridge's `/metrics`: loopback by default; docker-compose binds the container's network, where only Prometheus calls it.")
    mqtt_tls: bool = Field(False, description="Wharf's MQTT clients connect over TLS (devices to WHARF_MQTT_TLS_PORT; the bridge listener speaks TLS), trusting WHARF_MQTT_CA_FILE.")
    mqtt_tls_port: int = Field(8883, description="TLS listener for devices on the local Mosquitto (server certificate from the install's CA).")
    mqtt_tls_required: bool = Field(False, description="The local Mosquitto has no plaintext listener (implies WHARF_MQTT_TLS).")
    mqtt_ca_file: str = Field("", description="CA certificate MQTT clients trust. Empty: STATE_DIR/tls/ca.crt, generated once by `wharf infra up`.")
    mqtt_max_connections: int = Field(10_000, ge=1, description="Most clients per Mosquitto listener.")
    mqtt_session_expiry_hours: int = Field(
        6, ge=1, description="Hours Mosquitto keeps the persistent session (and queued messages) of a client that went away: a bridge that is gone for good stops queueing telemetry after this.")

    # --- HTTP credentials (streams/web/credentials.py, streams/web/guard.py) -----------------------------------------
    web_api_keys: SecretStr = Field(SecretStr(""), description="API keys of services (shop backends), comma separated: `POST /collect`, `POST /catalogue` and `GET /recommendations` accept `Authorization: Bearer KEY` or `X-API-Key: KEY`. None set and no file: those endpoints refuse everyone.")
    web_api_keys_file: str = Field("", description="File with more API keys, one per line (`#` comments); re-read when it changes, so deleting a line revokes that key without a restart. Empty: SECRETS_DIR/api-keys, generated by `wharf infra up`.")
    web_operator_tokens: SecretStr = Field(SecretStr(""), description="Operator tokens, comma separated: every other endpoint (dashboard data, acks, `/stats`) accepts `Authorization: Bearer TOKEN` or a dashboard login made with one.")
    web_operator_tokens_file: str = Field("", description="File with more operator tokens, one per line; re-read when it changes (a removed token also ends the logins made with it). Empty: SECRETS_DIR/operator-token, generated by `wharf infra up`.")
    web_metrics_tokens: SecretStr = Field(SecretStr(""), description="Bearer tokens, comma separated, that may read `GET /metrics` (Prometheus) and nothing else; operator tokens may read it too. None set: only operators.")
    web_session_secret: SecretStr = Field(SecretStr(""), description="Key that signs dashboard login cookies; empty: a random key per worker process (logins end when it restarts).")
    web_session_hours: float = Field(12.0, gt=0, le=24 * 30, description="Lifetime of a dashboard login.")
    web_allowed_origins: str = Field("", description="Browser origins (`scheme://host:port`, comma separated) allowed to send writes besides the worker's own addresses.")

    @field_validator("state_dir", "cache_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=_config_file()))

    # --- derived -------------------------------------------------------------
    @property
    def chdb_path(self) -> Path:
        return self.state_dir / "chdb"

    @property
    def local_clickhouse_server_url(self) -> str:
        from schemas.secrets import clickhouse_password

        return f"clickhouse://default:{clickhouse_password(self)}@127.0.0.1:{self.clickhouse_server_tcp_port}/wharf"

    def advertised_web_host(self) -> str:
        """`web_advertised_host`, or its default (see its description). A wildcard bind is no address another worker
        can use: every worker would advertise the same 0.0.0.0, and a forwarded request would come back to its sender."""
        if self.web_advertised_host:
            return self.web_advertised_host
        if self.web_host not in EVERY_INTERFACE:
            return self.web_host
        host, _, port = self.kafka_bootstrap.split(",")[0].strip().rpartition(":")
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.connect((host, int(port)))  # UDP: picks the route to Kafka, sends nothing
                return probe.getsockname()[0]
        except (OSError, ValueError):
            return socket.gethostname()

    def device_credentials(self) -> dict[str, str]:
        from schemas.secrets import device_credentials

        return device_credentials(self)

    def bridge_password(self) -> str:
        """The bridge's MQTT password: set, or generated by `wharf infra up` (schemas/secrets.py)."""
        from schemas.secrets import bridge_password

        return bridge_password(self)

    def api_keys_file(self) -> str:
        """WHARF_WEB_API_KEYS_FILE, or the keys `wharf infra up` generated (SECRETS_DIR/api-keys)."""
        from schemas.secrets import API_KEYS, secrets_dir

        return self.web_api_keys_file or str(secrets_dir(self) / API_KEYS)

    def operator_tokens_file(self) -> str:
        """WHARF_WEB_OPERATOR_TOKENS_FILE, or the token `wharf infra up` generated (SECRETS_DIR/operator-token)."""
        from schemas.secrets import OPERATOR_TOKEN, secrets_dir

        return self.web_operator_tokens_file or str(secrets_dir(self) / OPERATOR_TOKEN)

    @property
    def mqtt_tls_on(self) -> bool:
        return self.mqtt_tls or self.mqtt_tls_required

    def ca_file(self) -> Path:
        return Path(self.mqtt_ca_file) if self.mqtt_ca_file else self.state_dir / "tls" / "ca.crt"

    def env(self) -> dict[str, str]:
        """These settings as `WHARF_*` variables, for child processes (secrets in clear: children need them)."""
        out: dict[str, str] = {}
        for name, value in self.model_dump().items():
            out[f"WHARF_{name.upper()}"] = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        return out

    def shown(self) -> dict[str, str]:
        """`env()` for people: secrets masked, URL passwords removed (`wharf settings`)."""
        from schemas.redact import MASK, redact

        secret = {f"WHARF_{name.upper()}" for name, f in type(self).model_fields.items() if f.annotation is SecretStr}
        return {k: (MASK if v else "") if k in secret else redact(v) for k, v in self.env().items()}


def describe() -> list[tuple[str, str, str]]:
    """(env name, default, description) of every setting, for docs and `wharf settings`."""
    rows = []
    for name, field in Settings.model_fields.items():
        default: Any = field.default
        if isinstance(default, SecretStr):
            default = default.get_secret_value()
        if name == "cache_dir":
            default = "~/.cache/wharf"
        rows.append((f"WHARF_{name.upper()}", str(default), field.description or ""))
    return rows


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
