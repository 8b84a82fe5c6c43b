"""Shared fixtures. Tests talk to the real servers that `make test` started (scripts/test.sh);
run alone, the `stack` fixture starts them itself (idempotent)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("WHARF_CONFIG", str(ROOT / "tests" / "wharf-test.toml"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from wharf.settings import Settings, get_settings  # noqa: E402

DATASETS = ROOT.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def settings() -> Settings:
    s = get_settings()
    if not str(s.state_dir).endswith("test") and "test" not in s.app_id:
        pytest.exit("refusing to run tests against non-test settings (set WHARF_CONFIG=tests/wharf-test.toml)", 2)
    return s


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Settings:
    """The real Kafka, Mosquitto and ClickHouse server, up and answering."""
    from wharf import infra

    infra.up(settings, ["kafka", "mosquitto", "clickhouse"])
    return settings


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def server_url(stack: Settings) -> str:
    return f"clickhouse://default:@127.0.0.1:{stack.clickhouse_server_tcp_port}"


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory) -> Path:
    """chdb runs one embedded server per process, on one folder: tests share it and isolate by database."""
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture(params=["chdb", "server"])
def ch(request, chdb_path, unique):
    """A fresh, migrated database on each backend: embedded chdb and the 18.16 server (test_clickhouse.py has its own, unmigrated)."""
    from schemas.clickhouse import migrate
    from streams.clickhouse import connect

    if request.param == "chdb":
        c = connect(f"chdb://{chdb_path}?database=t_{unique}")
    else:
        c = connect(f"{request.getfixturevalue('server_url')}/t_{unique}")
    migrate(c)
    yield c
    c.command(f"DROP DATABASE IF EXISTS {c.database}")
