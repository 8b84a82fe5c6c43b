"""`wharf infra up | down | status`: the real servers Wharf needs, on 127.0.0.1.

State (data, logs, pid files) lives under `settings.state_dir`; every call is
idempotent: `up` on a running stack only checks it, `down` on a stopped one does nothing.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from wharf.infra.clickhouse_server import ClickHouseServer
from wharf.infra.kafka import Kafka, delete_topics_containing, ensure_topics
from wharf.infra.mosquitto import Mosquitto
from wharf.infra.process import ServiceError
from schemas.secrets import ensure_secrets
from streams.runtime.topics import topic_names
from schemas.settings import Settings

SERVICES = ("kafka", "mosquitto", "clickhouse")

__all__ = ["SERVICES", "ServiceError", "ServiceStatus", "up", "down", "status", "services", "default_services", "remove_bench_run"]


def services(settings: Settings) -> dict[str, Kafka | Mosquitto | ClickHouseServer]:
    return {"kafka": Kafka(settings), "mosquitto": Mosquitto(settings), "clickhouse": ClickHouseServer(settings)}


def default_services(settings: Settings) -> list[str]:
    """Kafka and Mosquitto always; the ClickHouse server only when the settings point at it (chdb needs none)."""
    names = ["kafka", "mosquitto"]
    if f":{settings.clickhouse_server_tcp_port}" in settings.clickhouse_url:
        names.append("clickhouse")
    return names


@dataclass
class ServiceStatus:
    name: str
    running: bool
    pid: int | None
    where: str
    log: str
    ready_seconds: float | None = None


def up(settings: Settings, names: list[str] | None = None) -> list[ServiceStatus]:
    names = names or default_services(settings)
    unknown = set(names) - set(SERVICES)
    if unknown:
        raise ServiceError(f"unknown service(s) {sorted(unknown)}; choose from {list(SERVICES)}")
    ensure_secrets(settings)  # the state folder 0700, per-install secrets 0600: before any server reads them
    all_services = services(settings)
    out = []
    for name in names:
        svc = all_services[name]
        took = svc.start()
        if name == "kafka":
            asyncio.run(ensure_topics(Kafka(settings).admin_settings(), topic_names(settings), settings.topic_partitions))
        if name == "mosquitto":
            from wharf.infra.sessions import end_abandoned

            end_abandoned(settings)  # a killed benchmark's bridge session: its queue would grow with all telemetry
        out.append(_status(name, svc, took))
    return out


def down(settings: Settings, names: list[str] | None = None) -> list[str]:
    """Stop services in reverse dependency order; returns the names that were running."""
    stopped = []
    all_services = services(settings)
    for name in reversed(names if names is not None else list(SERVICES)):
        if all_services[name].stop():
            stopped.append(name)
    return stopped


def status(settings: Settings) -> list[ServiceStatus]:
    return [_status(name, svc, None) for name, svc in services(settings).items()]


def _status(name: str, svc, took: float | None) -> ServiceStatus:  # noqa: ANN001
    pid = svc.process.pid()
    return ServiceStatus(name=name, running=pid is not None, pid=pid, where=svc.where, log=str(svc.process.log_file), ready_seconds=took)


def wait_for(predicate, timeout: float, interval: float = 0.2) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


async def remove_bench_run(settings: Settings, tag: str, database_url: str | None) -> None:
    """Remove what one benchmark run made, also after a failure: its ClickHouse database (`database_url`; None
    when it ran on chdb inside its own state folder) and every topic whose name holds its run `tag`."""
    await delete_topics_containing(settings, tag)  # its own and its bench app's internal ones
    if database_url is None:
        return
    from streams.sinks.clickhouse import connect, with_local_password
    from schemas.redact import redact

    try:
        ch = connect(with_local_password(settings, database_url))
        ch.command(f"DROP DATABASE IF EXISTS {ch.database}")
    except Exception as exc:  # noqa: BLE001 - e.g. the server is what failed, or the worker never created it
        print(redact(f"(bench database {database_url} not dropped: {exc})"))
