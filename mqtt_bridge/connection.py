"""Where and how Wharf's MQTT clients connect: devices to the device listeners, the bridge to its own.

Devices (simulator, replay, benchmarks) use WHARF_MQTT_PORT, or WHARF_MQTT_TLS_PORT when TLS
is on; there Mosquitto makes the client id the user name, so a device cannot claim another's
session. The bridge and the alert publisher use WHARF_MQTT_BRIDGE_PORT, where only the
bridge user logs in. With TLS on, every client verifies the broker against the install's CA.
"""

from __future__ import annotations

import ssl
import time

import paho.mqtt.client as mqtt

from schemas.settings import Settings


def device_endpoint(settings: Settings) -> tuple[str, int]:
    return settings.mqtt_host, settings.mqtt_tls_port if settings.mqtt_tls_on else settings.mqtt_port


def bridge_endpoint(settings: Settings) -> tuple[str, int]:
    return settings.mqtt_host, settings.mqtt_bridge_port


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS with the install's CA (certificate and hostname checked) when the settings ask for it, else None."""
    return ssl.create_default_context(cafile=str(settings.ca_file())) if settings.mqtt_tls_on else None


def secure(client: mqtt.Client, settings: Settings) -> mqtt.Client:
    """A paho client on TLS (`ssl_context`) when the settings ask for it; the client unchanged otherwise."""
    context = ssl_context(settings)
    if context is not None:
        client.tls_set_context(context)
    return client


def mosquitto_client_args(settings: Settings) -> list[str]:
    """Host, port and TLS options for `mosquitto_pub` / `mosquitto_sub` as a device."""
    host, port = device_endpoint(settings)
    return ["-h", host, "-p", str(port), *(["--cafile", str(settings.ca_file())] if settings.mqtt_tls_on else [])]


def end_session(settings: Settings, client_id: str, timeout: float = 10.0) -> bool:
    """Remove the persistent session of a bridge client that will not come back (a benchmark's, a test's).

    An MQTT 3.1.1 session ends when its client id connects with clean_session=True: Mosquitto drops
    the subscriptions and the queued messages, so telemetry stops piling up for a reader that is gone.
    Returns True once the broker accepted the clean connection.
    """
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311)
    client.username_pw_set(settings.mqtt_bridge_user, settings.bridge_password())
    secure(client, settings)
    accepted: list[bool] = []
    client.on_connect = lambda c, u, flags, rc, props: accepted.append(not rc.is_failure)
    client.connect(*bridge_endpoint(settings), keepalive=10)
    deadline = time.monotonic() + timeout
    while not accepted and time.monotonic() < deadline:
        client.loop(timeout=0.1)
    client.disconnect()
    client.loop(timeout=0.1)
    return bool(accepted and accepted[0])
