"""Device logins for a benchmark's publishers, one each: the configured devices first, then, for the rest, bench
devices added to the local Mosquitto for the run and removed after it.

Issue 21: `--publishers 8` silently ran one publisher when the settings named one device. Here a benchmark gets
exactly the publishers it asks for, or an error that says why not.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pydantic import SecretStr

from mqtt_bridge.connection import device_endpoint, mosquitto_client_args
from mqtt_bridge.topics import telemetry_topic
from schemas.secrets import device_registry, new_secret
from schemas.settings import Settings
from wharf.infra.mosquitto import Mosquitto, check_login


@dataclass(frozen=True)
class Publisher:
    user: str
    password: str
    site: str
    zone: str

    @property
    def topic(self) -> str:
        return telemetry_topic(self.site, self.zone, self.user)

    def mosquitto_pub(self, settings: Settings, *options: str) -> list[str]:
        """`mosquitto_pub -l` as this device (QoS 1, MQTT 3.1.1, TLS where the settings ask for it), publishing each
        line read from stdin. The password goes on the command line (-P): mosquitto_pub reads none from the
        environment. The client id is the user name (the broker's rule on device listeners)."""
        return ["mosquitto_pub", *mosquitto_client_args(settings), "-i", self.user, "-u", self.user, "-P", self.password,
                "-q", "1", "-V", "mqttv311", *options, "-t", self.topic, "-l"]


def _configured(settings: Settings, site: str) -> list[Publisher]:
    """Registered devices with a password (a device outside the registry may publish nowhere: see the ACL)."""
    registry = device_registry(settings)
    out = []
    for user, password in settings.device_credentials().items():
        place = registry.get(user)
        if place is not None:
            out.append(Publisher(user, password, site if place.site == "+" else place.site, "z1" if place.zone == "+" else place.zone))
    return out


def _can_log_in(settings: Settings, p: Publisher) -> bool:
    host, port = device_endpoint(settings)
    try:
        return check_login(host, port, p.user, p.password, ca_file=settings.ca_file() if settings.mqtt_tls_on else None) == 0
    except (OSError, TimeoutError):
        return False


@contextmanager
def provisioned(settings: Settings, n: int, site: str) -> Iterator[list[Publisher]]:
    """`n` publishers with their own logins. Missing ones are added to the Mosquitto that `wharf infra up` runs
    here (password and ACL files rewritten, SIGHUP) and removed again on exit; RuntimeError if that broker is
    not ours to change, or a login is refused."""
    if n < 1:
        raise ValueError("at least one publisher")
    have = _configured(settings, site)[:n]
    extra = [Publisher(f"bench-{uuid.uuid4().hex[:6]}-{i}", new_secret(), site, "z1") for i in range(n - len(have))]
    if not extra:
        yield have
        return
    grown = settings.model_copy(update={
        "mqtt_devices": SecretStr(",".join(filter(None, [settings.mqtt_devices.get_secret_value(), *(f"{p.user}:{p.password}" for p in extra)]))),
        "mqtt_device_registry": ",".join(filter(None, [settings.mqtt_device_registry, *(f"{p.user}={p.site}/{p.zone}" for p in extra)])),
    })
    broker = Mosquitto(grown)
    if not broker.process.running():
        raise RuntimeError(f"{n} publishers need {n} device logins: the settings have {len(have)} (WHARF_MQTT_DEVICES and the "
                           f"device registry), and the broker is not one `wharf infra up` runs here, so none can be added "
                           f"for the run. Register more devices, or ask for at most {len(have)} publishers.")
    broker.reload()
    try:
        deadline = time.monotonic() + 10
        refused = extra
        while refused and time.monotonic() < deadline:
            time.sleep(0.2)  # the broker re-reads its files after the SIGHUP
            refused = [p for p in refused if not _can_log_in(settings, p)]
        if refused:
            raise RuntimeError(f"Mosquitto refused the bench publishers {[p.user for p in refused]} after a reload")
        yield have + extra
    finally:
        Mosquitto(settings).reload()  # the bench devices are gone again
