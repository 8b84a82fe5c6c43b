"""The one settings object.

Every knob lives here, read from `WHARF_*` environment variables and, below them,
from an optional TOML file (`WHARF_CONFIG`, default `wharf.toml` in the working
directory). The README's settings table is generated from this class
(`wharf settings --markdown`), so it cannot drift from the code.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


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
    topic_partitions: int = Field(8, ge=1, description="Partitions of every Wharf topic (the unit of scale-out).")

    # Topic names: declared once in streams/topics.py, named here.
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
    mqtt_bridge_password: str = Field("wharf-bridge-secret", description="Password of the bridge's MQTT user.")
    mqtt_devices: str = Field(
        "dev-001:dev-001-secret",
        description="Device credentials the local Mosquitto accepts, `id:password` comma separated. A device may publish only under its own id.",
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

    # --- Faust worker --------------------------------------------------------
    app_id: str = Field("wharf", description="Faust app id (Kafka consumer group and changelog prefix).")
    web_port: int = Field(6066, description="Port of the Faust worker's web server.")
    web_host: str = Field("127.0.0.1", description="Bind address of the Faust worker's web server.")

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
        return f"clickhouse://default:@127.0.0.1:{self.clickhouse_server_tcp_port}/wharf"

    def device_credentials(self) -> dict[str, str]:
        creds: dict[str, str] = {}
        for item in filter(None, (p.strip() for p in self.mqtt_devices.split(","))):
            device_id, sep, password = item.partition(":")
            if not sep or not device_id or not password:
                raise ValueError(f"WHARF_MQTT_DEVICES: entry {item!r} is not `device_id:password`")
            creds[device_id] = password
        return creds

    def env(self) -> dict[str, str]:
        """These settings as `WHARF_*` variables, for child processes."""
        out: dict[str, str] = {}
        for name, value in self.model_dump().items():
            out[f"WHARF_{name.upper()}"] = str(value)
        return out


def describe() -> list[tuple[str, str, str]]:
    """(env name, default, description) of every setting, for docs and `wharf settings`."""
    rows = []
    for name, field in Settings.model_fields.items():
        default: Any = field.default
        if name == "cache_dir":
            default = "~/.cache/wharf"
        rows.append((f"WHARF_{name.upper()}", str(default), field.description or ""))
    return rows


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
