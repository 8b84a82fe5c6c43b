"""`GET /metrics` on a real worker (Kafka, ClickHouse, its aiohttp server): who may scrape, and that the series
move when events flow (records per path, writer rows, lag per input partition, refusals, dead letters, the
recommendation latency histogram). Parsed with prometheus_client's own parser, as Prometheus would read it."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import urllib.error
import urllib.request
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from schemas import codec
from streams.sinks.clickhouse import connect
from tests.test_bridge import Device, bridge_setup  # noqa: F401 - the real bridge, as its own tests start it
from tests.test_bridge import reading as bridge_reading
from tests.test_bridge import wait_for as bridge_wait_for
from tests.test_pipeline import produce, reading, wait_until
from tests.workers import WorkerProcess, fresh_topics
from wharf import grafana_metrics

pytestmark = [pytest.mark.infra, pytest.mark.slow]

SCRAPER = f"metrics-{secrets.token_urlsafe(18)}"


class Site:
    def __init__(self, worker: WorkerProcess, env: dict[str, str]):
        self.worker, self.env = worker, env

    def get(self, path: str, token: str | None) -> tuple[int, bytes, dict]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        req = urllib.request.Request(f"http://127.0.0.1:{self.worker.web_port}{path}", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=15) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers)

    def post(self, path: str, payload: object) -> tuple[int, dict]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.worker.web_port}{path}", data=json.dumps(payload).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {self.worker.api_key}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=15) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample: (name, sorted labels) -> value."""
        status, body, headers = self.get("/metrics", SCRAPER)
        assert status == 200, body[:300]
        assert headers["Content-Type"].startswith("text/plain; version="), headers  # the text exposition format
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def click(i: int, tag: str) -> dict:
    return {"event_id": f"e-{tag}-{i}", "user_id": f"u-{tag}-{i % 5}", "session_id": f"s-{tag}-{i % 5}",
            "item_id": f"item-{i % 7:03d}", "action": "view", "ts": time.time()}


@pytest.fixture(scope="module")
async def site(stack, server_url, tmp_path_factory):
    from wharf.infra.kafka import ensure_topics

    u = uuid.uuid4().hex[:10]
    tmp = tmp_path_factory.mktemp("metrics")
    env = fresh_topics(u)
    env |= {"WHARF_APP_ID": f"wharf-test-metrics-{u}", "WHARF_STATE_DIR": str(tmp / "state"), "WHARF_CLICKHOUSE_URL": f"{server_url}/metrics_{u}",
            "WHARF_WEB_METRICS_TOKENS": SCRAPER, "WHARF_COMMERCE_SENTIMENT_ENCODER": "hashing", "WHARF_SINK_BATCH_SECONDS": "0.3",
            "WHARF_SENSOR_MODEL_OPTIONS": '{"use_forecaster": false}'}
    await ensure_topics(stack, [v for k, v in env.items() if k.startswith("WHARF_TOPIC_")], stack.topic_partitions)
    worker = await asyncio.to_thread(WorkerProcess(env, web_port=stack.web_port + 45, log=tmp / "worker.log").start)
    ch = connect(env["WHARF_CLICKHOUSE_URL"])
    try:
        yield Site(worker, env)
    finally:
        worker.stop()
        ch.command(f"DROP DATABASE IF EXISTS {ch.database}")


async def test_metrics_need_the_metrics_token_or_an_operator(site: Site):
    for token in (None, "wrong", site.worker.api_key):  # a shop's API key reads recommendations, not the worker's state
        status, body, headers = site.get("/metrics", token)
        assert status == 401, (token, status, body[:200])
        assert headers.get("WWW-Authenticate") == "Bearer"
    assert site.get("/metrics", site.worker.operator_token)[0] == 200
    # the metrics token opens /metrics only
    for path in ("/stats", "/commerce/stats", "/sensors/devices"):
        assert site.get(path, SCRAPER)[0] == 401, path


async def test_series_move_as_events_flow(site: Site, stack):
    env = site.env
    before = site.scrape()
    names = {name for name, _ in before}
    assert {"wharf_loop_stalls_total", "wharf_recommendation_request_seconds_count", "wharf_alarms"} <= names, sorted(names)

    # Readings through Kafka (one invalid), clicks through the collector (one invalid).
    readings = [(f"dev-{d:03d}".encode(), codec.dumps(reading(d, s))) for d in range(3) for s in range(10)]
    await produce(stack, env["WHARF_TOPIC_SENSOR_READINGS"], readings + [(b"dev-bad", b'{"device_id": "dev-bad"}')])
    status, body = site.post("/collect", {"clicks": [click(i, "m") for i in range(20)] + [{"event_id": "bad"}]})
    assert status == 400 and body["accepted"] == 20, body

    readings_topic, clicks_topic = env["WHARF_TOPIC_SENSOR_READINGS"], env["WHARF_TOPIC_CLICKS"]

    seen: dict = {}

    def moved() -> bool:
        now = seen["last"] = site.scrape()
        return (value(now, "wharf_records_processed_total", path="storage/sensor_readings") >= 31
                and value(now, "wharf_records_processed_total", path="sensors") >= 31
                and value(now, "wharf_records_processed_total", path="clicks") >= 20
                and value(now, "wharf_writer_rows_stored_total", table="sensor_readings") >= 30
                and value(now, "wharf_writer_rows_stored_total", table="clicks") >= 20
                and value(now, "wharf_validation_refusals_total", source=readings_topic) >= 1)

    try:
        await wait_until(moved, 90, "the series to count the events")
    except AssertionError:
        raise AssertionError({k: v for k, v in seen["last"].items() if k[0].startswith(("wharf_records", "wharf_writer_rows", "wharf_valid"))})
    after = site.scrape()
    # Lag: one series per input partition this worker owns (it owns them all: it is alone in its group).
    for topic in (readings_topic, clicks_topic):
        lag = {dict(labels)["partition"]: v for (name, labels), v in after.items()
               if name == "wharf_consumer_lag" and dict(labels)["topic"] == topic}
        assert sorted(lag, key=int) == [str(p) for p in range(stack.topic_partitions)], (topic, lag)
        assert all(v >= 0 for v in lag.values())
    assert value(after, "wharf_validation_refusals_total", source="http") >= 1  # the invalid click
    assert value(after, "wharf_dead_letters_total", source="http") >= 1
    assert value(after, "wharf_dead_letters_total", source=readings_topic) >= 1
    assert value(after, "wharf_writer_insert_seconds_total", table="clicks") > 0
    assert value(after, "wharf_writer_rows_pending", table="clicks") >= 0

    # A recommendation request is timed (the owner may still be restoring its shard: 503 counts too).
    count = value(after, "wharf_recommendation_request_seconds_count")
    status, _, _ = site.get("/recommendations/u-m-1?k=3", site.worker.api_key)
    assert status in (200, 503), status
    assert site.get("/recommendations/u-m-1", None)[0] == 401  # refused: not timed
    final = site.scrape()
    assert value(final, "wharf_recommendation_request_seconds_count") == count + 1
    # Every series the Grafana dashboard queries is one this worker exposes (the bridge's: below).
    missing = {n for n in grafana_metrics.series() if not n.startswith("wharf_bridge_")} - {name for name, _ in final}
    assert not missing, missing


async def test_bridge_serves_its_counters(bridge_setup, unique):
    """The bridge's own /metrics (prometheus_client's server on WHARF_BRIDGE_METRICS_PORT, loopback) counts what
    the real bridge received, forwarded and dead-lettered."""
    from mqtt_bridge import metrics

    s, bridge = bridge_setup
    assert metrics.serve(bridge.stats, s) is None  # port 0 (the default): nothing served
    port = s.web_port + 46
    server = metrics.serve(bridge.stats, s.model_copy(update={"bridge_metrics_port": port}))
    site = f"site-{unique}"
    d = Device(s, "dev-001", "dev-001-secret")

    def scrape() -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            return {sample.name: sample.value for family in text_string_to_metric_families(r.read().decode())
                    for sample in family.samples}

    try:
        before = scrape()
        for seq in range(5):
            d.publish(f"wharf/{site}/z1/dev-001/telemetry", bridge_reading(site, "z1", "dev-001", seq))
        d.publish(f"wharf/{site}/z1/dev-001/telemetry", b"{not json")
        await bridge_wait_for(lambda: bridge.stats.acked >= before["wharf_bridge_received_total"] + 6 and bridge.stats.in_flight == 0)
        after = scrape()
        assert after["wharf_bridge_received_total"] - before["wharf_bridge_received_total"] >= 6
        assert after["wharf_bridge_forwarded_total"] - before["wharf_bridge_forwarded_total"] >= 5
        assert after["wharf_bridge_dead_lettered_total"] - before["wharf_bridge_dead_lettered_total"] == 1
        assert after["wharf_bridge_in_flight"] == 0
        assert {n for n in grafana_metrics.series() if n.startswith("wharf_bridge_")} <= set(after)
    finally:
        d.close()
        server.shutdown()
