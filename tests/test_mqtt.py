"""The real Mosquitto: password auth, per-device ACLs, and QoS 1 persistence across a broker restart.

The bridge user logs in on the bridge listener (WHARF_MQTT_BRIDGE_PORT), devices on the device listener."""

import queue
import subprocess
import sys
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import SecretStr

from mqtt_bridge.connection import end_session
from wharf.infra.mosquitto import Mosquitto, check_login
from wharf.infra.sessions import end_abandoned, end_temporary, open_temporary

pytestmark = pytest.mark.infra


class Client:
    """A small synchronous wrapper: connect, subscribe, publish QoS 1 and wait for the broker's answer."""

    def __init__(self, settings, user, password, client_id=None, clean_start=True, v5=True, port=None, ca_file=None):
        self.messages: queue.Queue = queue.Queue()
        self.acks: dict[int, ReasonCode] = {}
        self.subacks: queue.Queue = queue.Queue()
        self._acked = threading.Condition()
        if v5:
            self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or uuid.uuid4().hex, protocol=mqtt.MQTTv5)
        else:
            self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or uuid.uuid4().hex,
                                 protocol=mqtt.MQTTv311, clean_session=clean_start)
        self.c.username_pw_set(user, password)
        if ca_file is not None:
            self.c.tls_set(ca_certs=str(ca_file))
        port = port or (settings.mqtt_bridge_port if user == settings.mqtt_bridge_user else settings.mqtt_port)
        self.disconnects: queue.Queue = queue.Queue()
        self.c.on_disconnect = lambda c, u, f, rc, p: self.disconnects.put(rc)
        self.c.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        self.c.on_publish = self._on_publish
        self.c.on_subscribe = lambda c, u, mid, rcs, props: self.subacks.put(rcs)
        connected = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: connected.set()
        if v5:
            props = mqtt.Properties(mqtt.PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            self.c.connect(settings.mqtt_host, port, clean_start=clean_start, properties=props)
        else:
            self.c.connect(settings.mqtt_host, port)
        self.c.loop_start()
        assert connected.wait(10), "no CONNACK"

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self._acked:
            self.acks[mid] = reason_code
            self._acked.notify_all()

    def publish(self, topic, payload, qos=1) -> ReasonCode:
        info = self.c.publish(topic, payload, qos=qos)
        with self._acked:
            assert self._acked.wait_for(lambda: info.mid in self.acks, timeout=10), "no PUBACK"
            return self.acks[info.mid]

    def subscribe(self, topic, qos=1):
        self.c.subscribe(topic, qos=qos)
        return self.subacks.get(timeout=10)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def test_password_auth(stack):
    assert check_login(stack.mqtt_host, stack.mqtt_bridge_port, stack.mqtt_bridge_user, stack.bridge_password()) == 0
    assert check_login(stack.mqtt_host, stack.mqtt_port, "dev-001", "dev-001-secret") == 0
    # Each user on its own listener only: the bridge's password does not open the device port, nor a device's the bridge's.
    assert check_login(stack.mqtt_host, stack.mqtt_port, stack.mqtt_bridge_user, stack.bridge_password()) in (134, 135)
    assert check_login(stack.mqtt_host, stack.mqtt_bridge_port, "dev-001", "dev-001-secret") in (134, 135)
    # Mosquitto 2.0 answers 135 (not authorized); newer brokers 134 (bad user name or password).
    assert check_login(stack.mqtt_host, stack.mqtt_port, "dev-001", "wrong") in (134, 135)
    assert check_login(stack.mqtt_host, stack.mqtt_port, "intruder", "x") in (134, 135)


def test_device_publishes_its_own_telemetry_and_the_bridge_receives_it(stack, unique):
    bridge = Client(stack, stack.mqtt_bridge_user, stack.bridge_password())
    device = Client(stack, "dev-001", "dev-001-secret")
    try:
        assert not bridge.subscribe("wharf/+/+/+/telemetry")[0].is_failure
        topic = f"wharf/site-{unique}/z1/dev-001/telemetry"
        rc = device.publish(topic, b'{"hello": 1}')
        assert not rc.is_failure
        got_topic, payload = bridge.messages.get(timeout=10)
        assert (got_topic, payload) == (topic, b'{"hello": 1}')
    finally:
        bridge.close()
        device.close()


def test_acl_refuses_a_device_speaking_for_another(stack, unique):
    bridge = Client(stack, stack.mqtt_bridge_user, stack.bridge_password())
    device = Client(stack, "dev-001", "dev-001-secret")
    snoop = Client(stack, "dev-002", "dev-002-secret")
    try:
        bridge.subscribe("wharf/+/+/+/telemetry")
        rc = device.publish(f"wharf/site-{unique}/z1/dev-002/telemetry", b"spoofed")
        assert rc.is_failure and rc.value == 135, rc  # Not authorized
        # Mosquitto grants a wildcard subscription but checks read access per message:
        # another device never receives dev-001's telemetry.
        snoop.subscribe("wharf/+/+/+/telemetry")
        rc = device.publish(f"wharf/site-{unique}/z1/dev-001/telemetry", b"mine")
        assert not rc.is_failure
        assert bridge.messages.get(timeout=10)[1] == b"mine"  # the spoofed one never arrived first
        assert bridge.messages.empty()
        with pytest.raises(queue.Empty):
            snoop.messages.get(timeout=1)
    finally:
        bridge.close()
        device.close()
        snoop.close()


def test_qos1_messages_survive_a_broker_restart(stack, unique):
    """A persistent bridge session keeps collecting QoS 1 messages while the bridge is away and the broker restarts.

    MQTT 3.1.1 with clean_session=False: Mosquitto 2.0.11 (Debian 12) restores 3.1.1 persistent
    sessions from its database but not MQTT 5 sessions with a session expiry interval
    (measured here), so the bridge uses 3.1.1 for its subscription.
    """
    client_id = f"test-bridge-{unique}"
    bridge = Client(stack, stack.mqtt_bridge_user, stack.bridge_password(), client_id=client_id, clean_start=False, v5=False)
    bridge.subscribe(f"wharf/site-{unique}/+/+/telemetry")
    bridge.close()  # session stays (expiry 1 h)
    device = Client(stack, "dev-001", "dev-001-secret")
    for i in range(20):
        assert not device.publish(f"wharf/site-{unique}/z1/dev-001/telemetry", f"m{i}".encode()).is_failure
    device.close()

    broker = Mosquitto(stack)
    broker.stop()  # SIGTERM: mosquitto writes its persistence file
    broker.start()

    bridge = Client(stack, stack.mqtt_bridge_user, stack.bridge_password(), client_id=client_id, clean_start=False, v5=False)
    try:
        got = [bridge.messages.get(timeout=10)[1] for _ in range(20)]
        assert got == [f"m{i}".encode() for i in range(20)]
    finally:
        bridge.close()
        end_session(stack, client_id)


def test_new_device_credentials_take_effect_without_a_restart(stack, unique):
    """`wharf infra up` on a running broker rewrites the password file and makes Mosquitto re-read it (SIGHUP)."""
    import time

    from wharf.infra.mosquitto import Mosquitto

    newcomer = f"dev-{unique}"
    assert check_login(stack.mqtt_host, stack.mqtt_port, newcomer, "pw") in (134, 135)
    grown = stack.model_copy(update={"mqtt_devices": SecretStr(stack.mqtt_devices.get_secret_value() + f",{newcomer}:pw")})
    broker = Mosquitto(grown)
    pid = broker.process.pid()
    assert broker.start() == 0.0 and broker.process.pid() == pid  # same process, not restarted
    try:
        deadline = time.monotonic() + 5
        while check_login(stack.mqtt_host, stack.mqtt_port, newcomer, "pw") != 0:
            assert time.monotonic() < deadline, "the running broker did not pick up the new password file"
            time.sleep(0.1)
    finally:
        Mosquitto(stack).start()  # back to the test settings' devices



def _session_present(settings, client_id: str) -> bool:
    """Connect as the bridge user with clean_session=False and report the broker's session-present flag."""
    flags: list[bool] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=False)
    c.username_pw_set(settings.mqtt_bridge_user, settings.bridge_password())
    c.on_connect = lambda cl, u, f, rc, p: flags.append(f.session_present)
    c.connect(settings.mqtt_host, settings.mqtt_bridge_port)
    c.loop_start()
    try:
        deadline = time.monotonic() + 10
        while not flags and time.monotonic() < deadline:
            time.sleep(0.02)
        assert flags, "no CONNACK"
        return flags[0]
    finally:
        c.disconnect()
        c.loop_stop()


def test_a_bridge_session_that_is_ended_holds_nothing_more(stack, unique):
    """`end_session` (benchmarks and tests call it on their bridges) removes the persistent session and its queue."""
    client_id = f"test-ended-{unique}"
    topic = f"wharf/site-{unique}/zone-a/dev-001/telemetry"
    bridge = Client(stack, stack.mqtt_bridge_user, stack.bridge_password(), client_id=client_id, clean_start=False, v5=False)
    bridge.subscribe(topic)
    bridge.close()
    assert _session_present(stack, client_id)  # kept while the client is away: the contract the bridge relies on
    assert end_session(stack, client_id)
    device = Client(stack, "dev-001", "dev-001-secret")
    assert not device.publish(topic, b"queued for nobody").is_failure
    device.close()
    again = Client(stack, stack.mqtt_bridge_user, stack.bridge_password(), client_id=client_id, clean_start=False, v5=False)
    try:
        with pytest.raises(queue.Empty):
            again.messages.get(timeout=1.0)  # no subscription survived, so nothing was queued
    finally:
        again.close()
        end_session(stack, client_id)
    assert not _session_present(stack, f"never-{unique}")
    end_session(stack, f"never-{unique}")


def test_abandoned_sessions_expire_in_hours(stack):
    from pathlib import Path

    from wharf.infra.mosquitto import broker_options

    line = f"persistent_client_expiration {stack.mqtt_session_expiry_hours}h"
    assert line in broker_options(stack)
    conf = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto" / "mosquitto.conf"
    assert line in conf.read_text().splitlines()


def test_a_killed_benchmark_s_session_is_ended_by_the_next_one_and_a_running_one_s_kept(stack, unique):
    """A benchmark killed before it ended its bridge session leaves it written down (wharf/infra/sessions.py): the
    next benchmark (and `wharf infra up`) ends it, so its queue stops growing; a session whose owner runs is kept."""
    abandoned, owned = f"test-abandoned-{unique}", f"test-owned-{unique}"
    topic = f"wharf/site-{unique}/zone-a/dev-001/telemetry"
    for cid in (abandoned, owned):
        bridge = Client(stack, stack.mqtt_bridge_user, stack.bridge_password(), client_id=cid, clean_start=False, v5=False)
        bridge.subscribe(topic)
        bridge.close()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    open_temporary(stack, [owned])  # owned by this test's process, which runs
    ledger = stack.state_dir / "mqtt-sessions"
    (ledger / abandoned).write_text(f"{gone.stdout.strip()} 1\n")  # as a killed benchmark leaves it
    try:
        ended = end_abandoned(stack)
        assert abandoned in ended and owned not in ended
        assert not (ledger / abandoned).exists() and (ledger / owned).exists()
        assert _session_present(stack, owned)
        assert not _session_present(stack, abandoned)
    finally:
        end_session(stack, abandoned)  # the presence check above opened a fresh one
        assert end_temporary(stack, [owned]) == []
    assert not (ledger / owned).exists()
    assert not _session_present(stack, owned)
    end_session(stack, owned)
