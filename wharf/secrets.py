"""Per-install secrets and the device registry.

`wharf infra up` generates every secret once into the secrets folder (default
STATE_DIR/secrets, mode 0700, files 0600), so no two installs share a password
and none is committed. A setting given explicitly (environment, TOML) wins over
its file; the files are what a process reads when nothing was set:

| file | what |
|---|---|
| `mqtt-bridge-password` | password of the bridge's MQTT user |
| `mqtt-devices` | `device_id:password`, one a line, for every registered device |
| `clickhouse-password` | password of `default` on the local ClickHouse server |
| `api-keys` | keys for the HTTP endpoints, one a line |
| `operator-token` | token of the operator endpoints |

The device registry (which site and zone a device belongs to) is not secret: the
setting `mqtt_device_registry` over the file STATE_DIR/devices.
"""

from __future__ import annotations

import os
import re
import secrets as _random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from wharf.redact import register

if TYPE_CHECKING:
    from wharf.settings import Settings

BRIDGE_PASSWORD = "mqtt-bridge-password"
DEVICES = "mqtt-devices"
CLICKHOUSE_PASSWORD = "clickhouse-password"
API_KEYS = "api-keys"
OPERATOR_TOKEN = "operator-token"
REGISTRY_FILE = "devices"

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")  # one MQTT topic level (mqtt_bridge/topics.py)


class SecretMissing(RuntimeError):
    """A secret is neither set nor generated yet: `wharf infra up` generates it."""


# --- files ---------------------------------------------------------------------


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) and make it 0700: nobody else lists or enters it."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Write `text` to a 0600 file, atomically: the secret is never readable by others, not even for a moment."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def new_secret() -> str:
    return _random.token_urlsafe(32)


# --- reading ---------------------------------------------------------------------


def secrets_dir(settings: Settings) -> Path:
    return Path(settings.secrets_dir).expanduser().absolute() if settings.secrets_dir else settings.state_dir / "secrets"


def read_secret(settings: Settings, name: str) -> str | None:
    lines = read_lines(secrets_dir(settings) / name)
    if lines:
        register(lines)
    return lines[0] if lines else None


def bridge_password(settings: Settings) -> str:
    explicit = settings.mqtt_bridge_password.get_secret_value()
    value = explicit or read_secret(settings, BRIDGE_PASSWORD)
    if not value:
        raise SecretMissing(f"no MQTT bridge password: set WHARF_MQTT_BRIDGE_PASSWORD or run `wharf infra up` "
                            f"(it writes {secrets_dir(settings) / BRIDGE_PASSWORD})")
    register([value])
    return value


def clickhouse_password(settings: Settings) -> str:
    """Password of the local ClickHouse server's `default` user ('' before `wharf infra up` generated one)."""
    value = settings.clickhouse_password.get_secret_value() or read_secret(settings, CLICKHOUSE_PASSWORD) or ""
    register([value])
    return value


def parse_credentials(text: str, where: str) -> dict[str, str]:
    creds: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in re.split(r"[,\n]", text))):
        device_id, sep, password = item.partition(":")
        if not sep or not device_id or not password:
            raise ValueError(f"{where}: an entry is not `device_id:password`")  # the entry itself may hold a password
        creds[device_id] = password
    return creds


def device_credentials(settings: Settings) -> dict[str, str]:
    """Generated device passwords (secrets file), overlaid by those set explicitly (WHARF_MQTT_DEVICES)."""
    creds = parse_credentials("\n".join(read_lines(secrets_dir(settings) / DEVICES)), str(secrets_dir(settings) / DEVICES))
    creds.update(parse_credentials(settings.mqtt_devices.get_secret_value(), "WHARF_MQTT_DEVICES"))
    register(creds.values())
    return creds


@dataclass(frozen=True)
class Placement:
    """Where a device may speak: its site and zone (`+`: any, for test and bench devices only)."""

    site: str
    zone: str


def parse_registry(text: str, where: str) -> dict[str, Placement]:
    out: dict[str, Placement] = {}
    for item in filter(None, (p.strip() for p in re.split(r"[,\n]", text))):
        if item.startswith("#"):
            continue
        device_id, sep, place = item.partition("=")
        site, slash, zone = place.strip().partition("/")
        device_id, site, zone = device_id.strip(), site.strip(), zone.strip()
        if not sep or not slash or not _ID.match(device_id):
            raise ValueError(f"{where}: entry {item!r} is not `device_id=site/zone`")
        for level in (site, zone):
            if level != "+" and not _ID.match(level):
                raise ValueError(f"{where}: entry {item!r}: {level!r} is not a valid site or zone")
        out[device_id] = Placement(site, zone)
    return out


def registry_file(settings: Settings) -> Path:
    return settings.state_dir / REGISTRY_FILE


def device_registry(settings: Settings) -> dict[str, Placement]:
    """Devices and their site/zone: the file STATE_DIR/devices, overlaid by WHARF_MQTT_DEVICE_REGISTRY."""
    reg = parse_registry("\n".join(read_lines(registry_file(settings))), str(registry_file(settings)))
    reg.update(parse_registry(settings.mqtt_device_registry, "WHARF_MQTT_DEVICE_REGISTRY"))
    return reg


def register_devices(settings: Settings, placements: dict[str, Placement]) -> Path:
    """Add (or move) devices in the registry file; `wharf infra up` then gives them passwords and ACL entries."""
    path = registry_file(settings)
    current = parse_registry("\n".join(read_lines(path)), str(path))
    current.update(placements)
    private_dir(path.parent)
    path.write_text("# device_id=site/zone, one a line (wharf simulate --register, or by hand)\n"
                    + "".join(f"{d}={p.site}/{p.zone}\n" for d, p in sorted(current.items())))
    return path


# --- generating ------------------------------------------------------------------


@dataclass
class Generated:
    folder: Path
    created: list[str] = field(default_factory=list)

    def line(self) -> str:
        made = f"generated {', '.join(self.created)}" if self.created else "none new"
        return f"secrets in {self.folder} ({made})"


def ensure_secrets(settings: Settings) -> Generated:
    """Generate what is missing (existing secrets are kept: devices and services already use them) and lock
    the state folder down: 0700 for it and the secrets folder, 0600 for every secret file."""
    private_dir(settings.state_dir)
    folder = private_dir(secrets_dir(settings))
    out = Generated(folder)
    for name in (BRIDGE_PASSWORD, CLICKHOUSE_PASSWORD, OPERATOR_TOKEN, API_KEYS):
        path = folder / name
        if not read_lines(path):
            write_private(path, new_secret() + "\n")
            out.created.append(name)
        path.chmod(0o600)
    path = folder / DEVICES
    known = parse_credentials("\n".join(read_lines(path)), str(path))
    missing = [d for d in device_registry(settings) if d not in known]
    if missing or not path.exists():
        known.update({d: new_secret() for d in missing})
        write_private(path, "".join(f"{d}:{p}\n" for d, p in sorted(known.items())))
        if missing:
            out.created.append(f"{DEVICES} (+{len(missing)})")
    path.chmod(0o600)
    for name in (BRIDGE_PASSWORD, CLICKHOUSE_PASSWORD, OPERATOR_TOKEN, API_KEYS):
        register(read_lines(folder / name))
    register(known.values())
    return out
