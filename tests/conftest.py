"""Shared fixtures. Tests talk to the real servers that `make test` started (scripts/test.sh);
run alone, the `stack` fixture starts those not running and stops them when the session ends."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("WHARF_CONFIG", str(ROOT / "tests" / "wharf-test.toml"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from schemas.settings import Settings, get_settings  # noqa: E402

DATASETS = ROOT.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def settings() -> Settings:
    s = get_settings()
    if not str(s.state_dir).endswith("test") and "test" not in s.app_id:
        pytest.exit("refusing to run tests against non-test settings (set WHARF_CONFIG=tests/wharf-test.toml)", 2)
    return s


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Iterator[Settings]:
    """The real Kafka, Mosquitto and ClickHouse server, up and answering; those this session started are stopped
    at its end (left running, they held the test ports against the next run, e.g. CI in another checkout)."""
    from wharf import infra

    from wharf.infra.kafka import delete_topics, topic_list

    wanted = ["kafka", "mosquitto", "clickhouse"]
    running = {s.name for s in infra.status(settings) if s.running}
    infra.up(settings, wanted)
    before = asyncio.run(topic_list(settings))
    yield settings
    try:  # the session's topics (its tests' own and their workers' internal ones): kept, they pile up run after run
        asyncio.run(delete_topics(settings, asyncio.run(topic_list(settings)) - before))
    finally:
        infra.down(settings, [name for name in wanted if name not in running])


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


def topic_env(unique: str) -> dict[str, str]:
    """`WHARF_TOPIC_*` for every topic a worker reads or writes, each named for this test: a worker started on a
    shared default topic reads what earlier runs left there (an alarm ack from a demo once became a sixth dead letter)."""
    return {f"WHARF_{name.upper()}": f"test.{name.removeprefix('topic_')}.{unique}"
            for name in Settings.model_fields if name.startswith("topic_") and name != "topic_partitions"}


@pytest.fixture(scope="session")
def server_url(stack: Settings) -> str:
    return stack.local_clickhouse_server_url.rsplit("/", 1)[0]  # with the password `wharf infra up` generated


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory) -> Path:
    """chdb runs one embedded server per process, on one folder: tests share it and isolate by database."""
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture(params=["chdb", "server"])
def ch(request, chdb_path, unique):
    """A fresh, migrated database on each backend: embedded chdb and the 18.16 server (test_clickhouse.py has its own, unmigrated)."""
    from schemas.clickhouse import migrate
    from streams.sinks.clickhouse import connect

    if request.param == "chdb":
        c = connect(f"chdb://{chdb_path}?database=t_{unique}")
    else:
        c = connect(f"{request.getfixturevalue('server_url')}/t_{unique}")
    migrate(c)
    yield c
    c.command(f"DROP DATABASE IF EXISTS {c.database}")
