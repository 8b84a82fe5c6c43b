"""Per-install secrets (generated once, private files) and the one redaction helper."""

from __future__ import annotations

import logging
import stat

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from schemas.redact import MASK, install_log_redaction, redact, register
from schemas.secrets import device_registry, ensure_secrets, parse_registry, register_devices, secrets_dir
from schemas.settings import Settings


@pytest.fixture
def fresh(tmp_path, monkeypatch) -> Settings:
    monkeypatch.setenv("WHARF_CONFIG", str(tmp_path / "none.toml"))
    return Settings(state_dir=tmp_path / "state", mqtt_device_registry="cold-1=berlin/cold-a")


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_secrets_are_generated_once_into_private_files(fresh):
    made = ensure_secrets(fresh)
    folder = secrets_dir(fresh)
    assert mode(fresh.state_dir) == 0o700 and mode(folder) == 0o700
    names = {p.name for p in folder.iterdir()}
    assert names == {"mqtt-bridge-password", "mqtt-devices", "clickhouse-password", "api-keys", "operator-token",
                     "kafka-password", "kafka-admin-password"}
    assert all(mode(folder / n) == 0o600 for n in names)
    first = {n: (folder / n).read_text() for n in names}
    assert len({first[n] for n in names}) == len(names)  # all different
    assert len(fresh.bridge_password()) >= 32 and fresh.bridge_password() == first["mqtt-bridge-password"].strip()
    assert set(fresh.device_credentials()) == {"cold-1"}
    assert made.created and not ensure_secrets(fresh).created  # the second run keeps them
    assert {n: (folder / n).read_text() for n in names} == first


def test_new_devices_get_passwords_and_explicit_settings_win(fresh):
    ensure_secrets(fresh)
    old = fresh.device_credentials()["cold-1"]
    register_devices(fresh, parse_registry("fork-1=berlin/dock", "test"))
    assert set(device_registry(fresh)) == {"cold-1", "fork-1"}
    ensure_secrets(fresh)
    creds = fresh.device_credentials()
    assert creds["cold-1"] == old and len(creds["fork-1"]) >= 32
    explicit = fresh.model_copy(update={"mqtt_devices": SecretStr("cold-1:set-by-operator"), "mqtt_bridge_password": SecretStr("bridge-pw-x")})
    assert explicit.device_credentials()["cold-1"] == "set-by-operator" and explicit.bridge_password() == "bridge-pw-x"


def test_registry_refuses_what_is_not_site_and_zone():
    for bad in ("dev-1", "dev-1=site", "dev 1=a/b", "dev-1=a/b c", "dev-1=a/#"):
        with pytest.raises(ValueError):
            parse_registry(bad, "test")
    assert parse_registry("a=+/+, b=s1/z1", "t")["a"].site == "+"


def test_redact_masks_url_passwords_and_known_secrets():
    assert redact("clickhouse://wharf:s3cr%40t@clickhouse:9000/wharf") == f"clickhouse://wharf:{MASK}@clickhouse:9000/wharf"
    assert redact("unreachable at clickhouse://:pw123456@h:1/x") == f"unreachable at clickhouse://:{MASK}@h:1/x"
    assert redact("chdb:///tmp/x?database=y") == "chdb:///tmp/x?database=y"
    register(["tok-abcdefghijklmnop"])
    assert redact("bad token tok-abcdefghijklmnop given") == f"bad token {MASK} given"


def test_settings_command_and_logs_show_no_secret(fresh, monkeypatch, caplog):
    from wharf.cli import app
    from schemas.settings import get_settings

    ensure_secrets(fresh)
    monkeypatch.setenv("WHARF_STATE_DIR", str(fresh.state_dir))
    monkeypatch.setenv("WHARF_MQTT_DEVICES", "dev-9:plain-device-password")
    monkeypatch.setenv("WHARF_CLICKHOUSE_URL", "clickhouse://wharf:url-password-42@ch:9000/wharf")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["settings"], env={"COLUMNS": "400"})
        s = get_settings()
        shown = s.shown()
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    for secret in ("plain-device-password", "url-password-42", s.bridge_password()):
        assert secret not in result.output and secret not in str(shown)
    assert shown["WHARF_MQTT_DEVICES"] == MASK and "wharf:***@ch" in shown["WHARF_CLICKHOUSE_URL"]
    assert s.env()["WHARF_MQTT_DEVICES"] == "dev-9:plain-device-password"  # children still get it

    install_log_redaction()
    with caplog.at_level(logging.INFO):
        logging.getLogger("wharf.test").warning("connecting to %s with %s", "clickhouse://u:url-password-42@h:1/db", s.bridge_password())
    assert "url-password-42" not in caplog.text and s.bridge_password() not in caplog.text and MASK in caplog.text


def test_local_clickhouse_url_gets_the_generated_password_but_prints_without_it(fresh):
    from streams.sinks.clickhouse import with_local_password

    ensure_secrets(fresh)
    pw = (secrets_dir(fresh) / "clickhouse-password").read_text().strip()
    local = f"clickhouse://default:@127.0.0.1:{fresh.clickhouse_server_tcp_port}/wharf"
    assert with_local_password(fresh, local) == f"clickhouse://default:{pw}@127.0.0.1:{fresh.clickhouse_server_tcp_port}/wharf"
    assert with_local_password(fresh, "clickhouse://default:@other-host:9000/wharf") == "clickhouse://default:@other-host:9000/wharf"
    assert pw not in redact(fresh.local_clickhouse_server_url)
