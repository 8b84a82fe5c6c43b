"""The real Mosquitto's transport and binding rules: TLS with the install's CA, TLS required, devices bound to
their site and zone, client ids that cannot be taken over, no retained messages."""

from __future__ import annotations

import queue
import ssl
import time

import pytest
from pydantic import SecretStr

from tests.test_mqtt import Client
from wharf.infra.mosquitto import Mosquitto, check_login
from schemas.secrets import ensure_secrets

pytestmark = pytest.mark.infra


def test_a_device_publishes_over_tls_trusting_the_install_ca(stack, unique):
    bridge = Client(stack, stack.mqtt_bridge_user, stack.bridge_password())
    device = Client(stack, "dev-001", "dev-001-secret", port=stack.mqtt_tls_port, ca_file=stack.ca_file())
    try:
        assert device.c._ssl, "the device connection is not TLS"
        assert not bridge.subscribe("wharf/+/+/+/telemetry")[0].is_failure
        topic = f"wharf/site-{unique}/z1/dev-001/telemetry"
        assert not device.publish(topic, b"over tls").is_failure
        assert bridge.messages.get(timeout=10) == (topic, b"over tls")
    finally:
        bridge.close()
        device.close()


def test_a_client_that_does_not_trust_the_ca_is_refused(stack, tmp_path):
    # The system's CAs do not know the install's CA: the handshake fails before any password is sent.
    with pytest.raises(ssl.SSLCertVerificationError):
        check_login(stack.mqtt_host, stack.mqtt_tls_port, "dev-001", "dev-001-secret", ca_file=ssl.get_default_verify_paths().cafile
                    or "/etc/ssl/certs/ca-certificates.crt")
    assert check_login(stack.mqtt_host, stack.mqtt_tls_port, "dev-001", "dev-001-secret", ca_file=stack.ca_file()) == 0


def test_with_tls_required_plaintext_is_refused(stack, tmp_path):
    """A broker of its own (own state folder and ports) with `mqtt_tls_required`: no plaintext listener at all."""
    s = stack.model_copy(update={"state_dir": tmp_path, "mqtt_port": stack.mqtt_port + 200, "mqtt_bridge_port": stack.mqtt_bridge_port + 200,
                                 "mqtt_tls_port": stack.mqtt_tls_port + 200, "mqtt_tls_required": True})
    ensure_secrets(s)
    broker = Mosquitto(s)
    broker.start()  # ready = the bridge logged in over TLS on its listener
    try:
        with pytest.raises(ConnectionRefusedError):
            check_login(s.mqtt_host, s.mqtt_port, "dev-001", "dev-001-secret")
        with pytest.raises((ssl.SSLError, ConnectionError, TimeoutError, OSError)):
            check_login(s.mqtt_host, s.mqtt_bridge_port, s.mqtt_bridge_user, s.bridge_password())  # plaintext to a TLS listener
        assert check_login(s.mqtt_host, s.mqtt_tls_port, "dev-001", "dev-001-secret", ca_file=s.ca_file()) == 0
        assert check_login(s.mqtt_host, s.mqtt_bridge_port, s.mqtt_bridge_user, s.bridge_password(), ca_file=s.ca_file()) == 0
    finally:
        broker.stop()


@pytest.fixture
def bound_device(stack, unique):
    """A device registered for one site and zone only, added to the running broker (SIGHUP), removed afterwards."""
    device_id, site, zone = f"bound-{unique}", f"site-{unique}", "zone-a"
    grown = stack.model_copy(update={
        "mqtt_devices": SecretStr(stack.mqtt_devices.get_secret_value() + f",{device_id}:{device_id}-pw"),
        "mqtt_device_registry": stack.mqtt_device_registry + f",{device_id}={site}/{zone}",
    })
    Mosquitto(grown).start()
    deadline = time.monotonic() + 5
    while check_login(stack.mqtt_host, stack.mqtt_port, device_id, f"{device_id}-pw") != 0:
        assert time.monotonic() < deadline, "the running broker did not pick up the new device"
        time.sleep(0.1)
    yield device_id, f"{device_id}-pw", site, zone
    Mosquitto(stack).start()


def test_a_device_cannot_publish_for_another_zone_or_site(stack, bound_device):
    device_id, password, site, zone = bound_device
    bridge = Client(stack, stack.mqtt_bridge_user, stack.bridge_password())
    device = Client(stack, device_id, password)
    try:
        bridge.subscribe("wharf/+/+/+/telemetry")
        assert device.publish(f"wharf/{site}/zone-b/{device_id}/telemetry", b"other zone").value == 135  # not authorized
        assert device.publish(f"wharf/other-site/{zone}/{device_id}/telemetry", b"other site").value == 135
        assert not device.publish(f"wharf/{site}/{zone}/{device_id}/telemetry", b"own zone").is_failure
        assert bridge.messages.get(timeout=10) == (f"wharf/{site}/{zone}/{device_id}/telemetry", b"own zone")
        with pytest.raises(queue.Empty):
            bridge.messages.get(timeout=1)
    finally:
        bridge.close()
        device.close()


def test_a_device_reads_only_its_own_commands(stack, bound_device):
    device_id, password, site, zone = bound_device
    device = Client(stack, device_id, password)
    try:
        granted = device.subscribe(f"wharf/{site}/{zone}/dev-001/commands")[0]
        # Mosquitto 2.0 grants a subscription it cannot match to read rights, or refuses it outright (newer brokers)
        if not granted.is_failure:
            other = Client(stack, "dev-001", "dev-001-secret")
            try:
                other.publish(f"wharf/{site}/{zone}/dev-001/commands", b"for dev-001")  # dev-001 may not write there anyway
            finally:
                other.close()
            with pytest.raises(queue.Empty):
                device.messages.get(timeout=1)
        assert not device.subscribe(f"wharf/{site}/{zone}/{device_id}/commands")[0].is_failure
    finally:
        device.close()


def test_a_device_cannot_take_over_the_bridge_client_id(stack, unique):
    """Device listeners replace the client id with the user name: the bridge keeps its session and its messages."""
    bridge_id = f"wharf-bridge-{unique}"
    bridge = Client(stack, stack.mqtt_bridge_user, stack.bridge_password(), client_id=bridge_id)
    impostor = Client(stack, "dev-002", "dev-002-secret", client_id=bridge_id)
    device = Client(stack, "dev-001", "dev-001-secret")
    try:
        bridge.subscribe("wharf/+/+/+/telemetry")
        time.sleep(0.5)
        with pytest.raises(queue.Empty):
            bridge.disconnects.get(timeout=0.5)
        assert bridge.c.is_connected()
        topic = f"wharf/site-{unique}/z1/dev-001/telemetry"
        assert not device.publish(topic, b"still here").is_failure
        assert bridge.messages.get(timeout=10) == (topic, b"still here")
    finally:
        for c in (bridge, impostor, device):
            c.close()


def test_retained_publishes_are_refused(stack, unique):
    topic = f"wharf/site-{unique}/z1/dev-001/status"
    device = Client(stack, "dev-001", "dev-001-secret")
    try:
        device.c.publish(topic, b"retain me", qos=1, retain=True)
        rc = device.disconnects.get(timeout=10)  # Mosquitto drops a client that asks for retain when it is off
        assert rc.value != 0
    finally:
        device.close()
    late = Client(stack, stack.mqtt_bridge_user, stack.bridge_password())
    try:
        late.subscribe(topic)
        with pytest.raises(queue.Empty):
            late.messages.get(timeout=1.5)
    finally:
        late.close()


def test_payloads_over_the_transport_limit_never_reach_the_bridge(stack, unique):
    """message_size_limit / max_packet_size are the transport's limit (1 MiB): the broker drops (and here
    disconnects) what is larger. Smaller payloads over WHARF_MAX_PAYLOAD_BYTES reach the bridge, which dead-letters
    them (tests/test_hostile_input.py)."""
    from wharf.infra.mosquitto import MESSAGE_SIZE_LIMIT

    bridge = Client(stack, stack.mqtt_bridge_user, stack.bridge_password())
    device = Client(stack, "dev-001", "dev-001-secret")
    topic = f"wharf/site-{unique}/z1/dev-001/telemetry"
    try:
        bridge.subscribe("wharf/+/+/+/telemetry")
        device.c.publish(topic, b"x" * (MESSAGE_SIZE_LIMIT + 2048), qos=1)
        with pytest.raises(queue.Empty):
            bridge.messages.get(timeout=1.5)
    finally:
        device.close()
    device = Client(stack, "dev-001", "dev-001-secret")
    try:
        assert not device.publish(topic, b"x" * 1000).is_failure
        assert bridge.messages.get(timeout=10) == (topic, b"x" * 1000)
    finally:
        device.close()
        bridge.close()
