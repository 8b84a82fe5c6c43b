"""`wharf.bench.paced`: the bench's `mosquitto_pub` publishers, against the real Mosquitto."""

from __future__ import annotations

import threading
import time
import uuid

import orjson
import paho.mqtt.client as mqtt
import pytest

from mqtt_bridge.connection import bridge_endpoint
from wharf.bench.paced import PacedPublishers
from wharf.bench.publishers import Publisher, provisioned


def _subscriber(settings, pubs: list[Publisher], got: list[tuple[str, dict, float]]) -> mqtt.Client:  # noqa: ANN001
    """The bridge's login, subscribed to the publishers' telemetry topics."""
    cid = f"test-paced-{uuid.uuid4().hex[:6]}"
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, clean_session=True, protocol=mqtt.MQTTv311)
    c.username_pw_set(settings.mqtt_bridge_user, settings.bridge_password())
    subscribed = threading.Event()
    c.on_connect = lambda c, u, f, rc, p: c.subscribe([(p.topic, 1) for p in pubs])
    c.on_subscribe = lambda *a: subscribed.set()
    c.on_message = lambda c, u, m: got.append((m.topic, orjson.loads(m.payload), time.time()))
    c.connect(*bridge_endpoint(settings))
    c.loop_start()
    assert subscribed.wait(10), "no SUBACK"
    return c


def _feed_for(publishers: PacedPublishers, seconds: float, line=None) -> None:  # noqa: ANN001
    """`publishers.feed` in a thread (as the bench runs it) for `seconds`, with `line` if given."""
    stop = threading.Event()
    feeder = threading.Thread(target=publishers.feed, args=(stop, line))
    feeder.start()
    time.sleep(seconds)
    stop.set()
    feeder.join()


def _wait_for(got: list, n: int) -> None:
    """Until `n` messages arrived at the subscriber, or 10 s."""
    deadline = time.time() + 10
    while len(got) < n and time.time() < deadline:
        time.sleep(0.05)


def test_paced_publishers_deliver_every_reading_in_order_with_its_publish_time(stack, tmp_path):
    """Every line fed is published (also the last ones, at `finish`), per device in seq order under its own login
    and topic, and a reading's `ts` is when it was fed: never later than the broker delivers it."""
    site = f"paced{uuid.uuid4().hex[:6]}"
    got: list[tuple[str, dict, float]] = []
    with provisioned(stack, 2, site) as pubs:
        sub = _subscriber(stack, pubs, got)
        try:
            def line(i: int, seq: int, now: float) -> bytes:
                return orjson.dumps({"device_id": pubs[i].user, "seq": seq, "ts": now})

            publishers = PacedPublishers(stack, pubs, rate=400, line=line, log=tmp_path / "pub.log")
            publishers.wait_connected()
            t0 = time.time()
            _feed_for(publishers, 1.0)
            publishers.finish()
            _wait_for(got, publishers.published)
        finally:
            sub.disconnect()
            sub.loop_stop()
    assert 300 <= publishers.published <= 500  # 400/s for about a second
    assert len(got) == publishers.published
    for p in pubs:
        mine = [(msg, at) for topic, msg, at in got if topic == p.topic]
        assert all(msg["device_id"] == p.user for msg, _ in mine)
        assert [msg["seq"] for msg, _ in mine] == list(range(len(mine)))
        assert all(t0 <= msg["ts"] <= at for msg, at in mine)


def test_a_refused_login_is_an_error_before_the_run(stack, tmp_path):
    """The bench checks its publishers before the timed run: a refused one has exited, and says so."""
    site = f"paced{uuid.uuid4().hex[:6]}"
    with provisioned(stack, 1, site) as pubs:
        wrong = [Publisher(pubs[0].user, "not-its-password", pubs[0].site, pubs[0].zone)]
        publishers = PacedPublishers(stack, wrong, rate=10, line=lambda i, s, t: b"{}", log=tmp_path / "pub.log")
        with pytest.raises(RuntimeError, match="mosquitto_pub exited before publishing"):
            publishers.wait_connected(10)  # or it saw the TCP connection before the refusal: then check() says it
            for _ in range(100):
                publishers.check()
                time.sleep(0.1)
        with pytest.raises(RuntimeError, match="exit code"):
            publishers.finish(10)


def test_a_warm_up_feed_then_the_timed_feed(stack, tmp_path):
    """`wharf bench sensors --warmup-seconds`: a first feed with its own lines (the warm-up's, not counted), then the
    timed feed with the constructor's; `published` counts each feed's own, and every line of both arrives."""
    site = f"paced{uuid.uuid4().hex[:6]}"
    got: list[tuple[str, dict, float]] = []
    with provisioned(stack, 2, site) as pubs:
        sub = _subscriber(stack, pubs, got)
        try:
            def line(i: int, seq: int, now: float) -> bytes:
                return orjson.dumps({"device_id": pubs[i].user, "seq": seq, "ts": now})

            def warm(i: int, seq: int, now: float) -> bytes:
                return orjson.dumps({"device_id": pubs[i].user, "seq": seq, "ts": now, "warm": True})

            publishers = PacedPublishers(stack, pubs, rate=400, line=line, log=tmp_path / "pub.log")
            publishers.wait_connected()
            counts = []
            for feed_line in (warm, None):
                _feed_for(publishers, 0.5, feed_line)
                counts.append(publishers.published)
            publishers.finish()
            _wait_for(got, sum(counts))
        finally:
            sub.disconnect()
            sub.loop_stop()
    assert all(100 <= n <= 300 for n in counts), counts  # 400/s for about half a second, each feed
    assert len(got) == sum(counts)
    for p in pubs:
        mine = [msg for topic, msg, _ in got if topic == p.topic]
        warmed = [m for m in mine if m.get("warm")]
        assert mine[:len(warmed)] == warmed  # the warm-up's first, then the timed feed's, each from seq 0
        assert [m["seq"] for m in warmed] == list(range(len(warmed)))
        assert [m["seq"] for m in mine[len(warmed):]] == list(range(len(mine) - len(warmed)))
    assert sum(not m.get("warm") for _, m, _ in got) == counts[1]
