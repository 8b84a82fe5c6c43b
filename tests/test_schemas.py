import json
import math
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import codec
from schemas.deadletter import DeadLetter
from schemas.events import ClickEvent, DeviceStatus, Review, SensorReading
from schemas.validation import InvalidEvent, Limits, check, checked, parse, validate

NOW = 1_700_000_000.0


def reading(**over):
    base = {
        "site": "berlin-1",
        "zone": "cold-a",
        "device_id": "dev-001",
        "device_type": "cold_room",
        "ts": NOW,
        "seq": 7,
        "metrics": {"temperature": 4.5, "humidity": 61},
    }
    base.update(over)
    return codec.dumps(base)


def refusal(payload: bytes, model=SensorReading, **kw) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        parse(payload, model, now=NOW, **kw)
    return info.value


def test_valid_reading_round_trips():
    r = parse(reading(), SensorReading, now=NOW)
    assert r.metrics == {"temperature": 4.5, "humidity": 61.0}
    assert r.device_type == "cold_room" and r.v == 1
    again = parse(codec.dumps(r), SensorReading, now=NOW)
    assert again == r


def test_iso_timestamp_with_zone_is_accepted_and_naive_is_refused():
    r = parse(reading(ts="2023-11-14T22:13:20Z"), SensorReading, now=NOW)
    assert r.ts == NOW
    e = refusal(reading(ts="2023-11-14T22:13:20"))
    assert e.field == "ts" and "time zone" in e.reason
    e = refusal(reading(ts="2023-11-14T23:13:20Z"))  # an hour ahead: the value is quoted as it was sent
    assert e.field == "ts" and "in the future" in e.reason and e.errors[0].value == "'2023-11-14T23:13:20Z'"


@pytest.mark.parametrize(
    ("payload", "field", "words"),
    [
        (reading(seq="seven"), "seq", "integer"),
        (reading(metrics={"temperature": "warm"}), "metrics", "must be a number"),
        (reading(metrics={}), "metrics", "at least 1"),
        (reading(device_type="toaster"), "device_type", "cold_room"),
        (reading(device_id="dev/001"), "device_id", "pattern"),
        (reading(extra_field=1), "extra_field", "not a known field"),
        (reading(ts=NOW * 1000), "ts", "milliseconds"),
        (reading(ts=NOW + 3600), "ts", "in the future"),
        (reading(ts=NOW - 30 * 86400), "ts", "in the past"),
    ],
)
def test_refusals_name_field_value_and_reason(payload, field, words):
    e = refusal(payload)
    assert e.field == field
    assert words in e.reason
    assert e.errors[0].value  # the offending value is quoted


def test_missing_fields_are_all_listed():
    e = refusal(codec.dumps({"site": "s", "ts": NOW}))
    fields = {err.field for err in e.errors}
    assert {"zone", "device_id", "device_type", "seq", "metrics"} <= fields
    assert all(err.reason == "is required" for err in e.errors if err.field in {"zone", "seq"})


def test_nan_and_infinity_are_refused():
    e = refusal(b'{"site":"s","zone":"z","device_id":"d","device_type":"cold_room","ts":1700000000,"seq":1,"metrics":{"t":NaN}}')
    assert e.field == "$" and "not valid JSON" in e.reason
    e = refusal(reading(metrics={"t": math.inf}))  # orjson writes inf as null: refused as not a number
    assert e.field == "metrics" and "must be a number" in e.reason


def test_oversized_and_non_object_payloads():
    e = refusal(reading(), limits=Limits(max_payload_bytes=256 if len(reading()) > 256 else 100))
    assert e.field == "$" and "exceeds" in e.reason
    e = refusal(b"[1, 2, 3]")
    assert "JSON object" in e.reason
    e = refusal(b"\xff\xfe not json")
    assert "not valid JSON" in e.reason


def test_click_and_review_rules():
    click = {"event_id": "e1", "user_id": "u1", "session_id": "s1", "item_id": "i1", "action": "purchase", "price": 9.5, "ts": NOW}
    assert parse(codec.dumps(click), ClickEvent, now=NOW).action == "purchase"
    e = refusal(codec.dumps(click | {"action": "like"}), ClickEvent)
    assert e.field == "action"
    e = refusal(codec.dumps(click | {"price": -1}), ClickEvent)
    assert e.field == "price"
    review = {"review_id": "r1", "user_id": "u1", "item_id": "i1", "rating": 6, "text": "great", "ts": NOW}
    e = refusal(codec.dumps(review), Review)
    assert e.field == "rating" and "less than or equal to 5" in e.reason
    ok = parse(codec.dumps(review | {"rating": None}), Review, now=NOW)
    assert ok.rating is None


def test_dead_letter_keeps_original_bytes_and_every_error():
    raw = b'{"site": "s", "ts": "yesterday"}'
    e = refusal(raw)
    letter = e.dead_letter(raw, "mqtt", mqtt_topic="wharf/s/z/dev-001/telemetry")
    decoded = DeadLetter.model_validate_json(letter.encode())
    assert decoded.payload == raw
    assert decoded.kind == "sensor_reading" and decoded.source == "mqtt"
    assert decoded.field == e.field and decoded.reason == e.reason
    assert len(decoded.errors) == len(e.errors) >= 5
    assert decoded.received_ts == pytest.approx(time.time(), abs=5)


def test_check_keeps_the_bytes_and_the_refusal_and_checked_takes_a_check_as_it_is():
    good, bad = reading(), reading(seq="seven")
    ok = check(good, SensorReading, now=NOW)
    assert ok.error is None and ok.payload == good
    assert ok.event == parse(good, SensorReading, now=NOW) == validate(codec.loads(good), SensorReading, now=NOW)
    no = check(bad, SensorReading, now=NOW)
    assert no.event is None and no.payload == bad and no.error.field == "seq" and "integer" in no.error.reason
    assert checked(no, SensorReading, now=NOW) is no  # a reader before checked it: not checked again
    assert checked(bytearray(good), SensorReading, now=NOW).event == ok.event


def test_event_time_limits_are_optional_for_internal_replays():
    old = parse(reading(ts=NOW - 30 * 86400), SensorReading, now=None)
    assert old.ts == NOW - 30 * 86400


def test_published_json_schema_is_the_models_schema():
    import json
    import re
    from pathlib import Path

    from schemas.events import DeviceStatus

    doc = (Path(__file__).resolve().parent.parent / "docs" / "device-payload.md").read_text()
    for marker, model in (("sensor_reading", SensorReading), ("device_status", DeviceStatus)):
        block = re.search(rf"<!-- schema:{marker} -->\n```json\n(.*?)\n```", doc, re.S).group(1)
        assert json.loads(block) == model.model_json_schema()
    example = json.loads(re.search(r"## Example\n\n```json\n(.*?)\n```", doc, re.S).group(1))
    assert parse(codec.dumps(example), SensorReading).device_id == "dev-001"


# --- hostile input: validation survives anything, refusals stay bounded --------------------------------------------

GOOD = {"site": "s1", "zone": "z1", "device_id": "dev-001", "device_type": "cold_room", "ts": 1_700_000_000.0, "seq": 1,
        "metrics": {"temperature": 4.2}}


def _refused(payload: bytes) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        parse(payload, SensorReading)
    return info.value


def test_a_reading_nested_1000_levels_deep_is_refused_not_a_crash():
    """It killed the bridge with RecursionError inside the refusal's own message, on every restart."""
    deep = b'{"a":' * 1000 + b"1" + b"}" * 1000
    for payload in (codec.dumps(GOOD | {"metrics": {"temperature": 1}}).replace(b"1}}", b"1}, \"x\": " + deep + b"}"),
                    codec.dumps(GOOD).replace(b'"seq":1', b'"seq":' + b"[" * 1000 + b"]" * 1000), deep):
        e = _refused(payload)
        assert e.errors and all(len(err.value) <= 80 for err in e.errors)
        letter = e.dead_letter(payload, "mqtt", mqtt_topic="wharf/s1/z1/dev-001/telemetry")
        assert letter.payload == payload and len(letter.encode()) < 20_000


def test_values_no_column_holds_are_refused_naming_the_field():
    """seq = 2^64 passed validation and then stopped both sensor writers (chdb: Integer exceeds 64-bit range)."""
    import json

    assert _refused(json.dumps(GOOD | {"seq": 2**64}).encode()).field == "seq"
    assert parse(json.dumps(GOOD | {"seq": 2**63 - 1}).encode(), SensorReading).seq == 2**63 - 1
    e = _refused(codec.dumps(GOOD | {"metrics": {"temperature": 1e200}}))
    assert e.field == "metrics" and "temperature" in e.reason and "1e+15" in e.reason
    assert _refused(codec.dumps(GOOD | {"ts": "2200-01-01T00:00:00Z"})).reason == "must be before 2100-01-01"
    for huge in (10**400, -(10**400)):  # beyond float, and beyond str(int)'s default 4,300 digits
        raw = codec.dumps(GOOD).replace(b'"seq":1', b'"seq":' + str(huge).encode())
        assert _refused(raw).field in ("seq", "$")
        raw = codec.dumps(GOOD).replace(b'"ts":1700000000.0', b'"ts":' + str(huge).encode())
        assert _refused(raw).field in ("ts", "$")


def test_a_dead_letter_is_bounded_whatever_the_input():
    import hashlib

    from schemas.deadletter import MAX_ERRORS, DeadLetter

    payload = b"x" * (900 * 1024)  # an MQTT payload under the broker's limit, over Kafka's once base64-encoded
    errors = [{"field": f"f{i}", "value": "v" * 10_000, "reason": "r" * 10_000} for i in range(50)]
    letter = DeadLetter.wrap(payload, kind="sensor_reading", source="mqtt", errors=errors, keep_bytes=64 * 1024)
    encoded = letter.encode()
    assert len(encoded) < 100_000  # Kafka's default record limit is 1 MB
    assert letter.payload == payload[: 64 * 1024] and letter.payload_truncated
    assert letter.payload_size == len(payload) and letter.payload_sha256 == hashlib.sha256(payload).hexdigest()
    assert len(letter.errors) == MAX_ERRORS and letter.errors_total == 50
    assert all(len(v) <= 300 for e in letter.errors for v in e.values())
    whole = DeadLetter.wrap(b"{}", kind="click", source="http", errors=[])
    assert whole.payload == b"{}" and not whole.payload_truncated


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.binary(max_size=2000),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
                 lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
                 max_leaves=40).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({k: st.one_of(st.just(v), st.integers(), st.floats(allow_nan=False), st.text(max_size=20), st.none(),
                                        st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))
                           for k, v in GOOD.items()}).map(lambda v: json.dumps(v).encode()),
))
def test_any_bytes_give_an_event_or_a_bounded_refusal(payload):
    """Property: whatever the bytes, validation returns an event or raises InvalidEvent, never anything else, and
    the dead letter of a refusal fits a Kafka record."""
    for model in (SensorReading, DeviceStatus, ClickEvent, Review):
        try:
            parse(payload, model, now=1_700_000_000.0)
        except InvalidEvent as e:
            assert e.errors and len(e.dead_letter(payload, "kafka").encode()) < 200_000


def test_anomaly_score_messages_are_valid_anomaly_scores():
    """What the anomaly-scores topic carries (`sensor_publish_scores`) is the schema's `AnomalyScore`, built from
    the same columns as the ClickHouse rows: the table's component arrays become one map."""
    from schemas import rows
    from schemas.events import AnomalyScore

    readings = [SensorReading(site="s", zone="z", device_id=f"d{i}", device_type="cold_room", ts=1.7e9 + i, seq=i,
                              metrics={"temperature": 4.0 + i}) for i in range(3)]
    cols = rows.anomaly_scores(readings, ["temperature"] * 3, [4.0, 5.0, 6.0], [0.1, 0.5, 0.9], [0.6] * 3, [0, 0, 1])
    cols["component_names"][2], cols["component_scores"][2] = ["level", "drift"], [0.9, 0.2]
    msgs = [AnomalyScore.model_validate_json(codec.dumps(m)) for m in rows.anomaly_score_messages(cols)]
    assert [(m.device_id, m.seq, m.value, m.score, m.is_anomaly) for m in msgs] == [
        ("d0", 0, 4.0, 0.1, False), ("d1", 1, 5.0, 0.5, False), ("d2", 2, 6.0, 0.9, True)]
    assert msgs[2].components == {"level": 0.9, "drift": 0.2} and msgs[0].components == {}


@pytest.mark.parametrize("value", [4.5, 61, 0, -0.0, 1e15, -1e15, 1e15 + 1, -1e16, 10**15, 10**15 + 1, 10**30, -(10**30),
                                   True, False, None, "4.5", "warm", [1.0], {"a": 1.0}, 1e-300, 2**63, -(2**64)])
def test_a_reading_s_metrics_are_refused_as_the_refusal_model_names_them(value):
    """`SensorReading` checks metrics in pydantic-core; `SensorReadingRefusal` (Python) names the reasons. They must
    accept the same values, from JSON and from Python alike, or a refusal would name no reason (or a wrong one)."""
    from schemas.events import SensorReadingRefusal

    data = codec.loads(reading()) | {"metrics": {"temperature": value}}
    payload = json.dumps(data).encode()
    outcomes = []
    for model in (SensorReading, SensorReadingRefusal):
        for check_with, arg in ((model.__pydantic_validator__.validate_json, payload), (model.model_validate, data)):
            try:
                outcomes.append(check_with(arg).metrics)
            except ValueError:
                outcomes.append("refused")
    assert outcomes[0] == outcomes[1] == outcomes[2] == outcomes[3]
    if outcomes[0] == "refused":
        e = refusal(payload)
        assert e.field == "metrics" and e.reason.startswith("metric 'temperature' must be")
    else:
        assert type(parse(payload, SensorReading, now=NOW).metrics["temperature"]) is float


def test_sensor_rows_are_each_reading_s_metrics_in_order():
    """The raw rows' metric names are shared between readings naming the same metrics in the same order; each row
    still has its own names and values, as the reading sent them."""
    from schemas import rows

    metrics = [{"temperature": 4.0, "humidity": 50.0}, {"humidity": 51.0, "temperature": 5.0}, {"temperature": 6.0, "humidity": 52}]
    readings = [SensorReading(site="s", zone="z", device_id="d", device_type="cold_room", ts=1.7e9 + i, seq=i, metrics=m)
                for i, m in enumerate(metrics)]
    cols = rows.sensor_readings(readings, ingest_ts=1.7e9)
    assert cols["metric_names"] == [["temperature", "humidity"], ["humidity", "temperature"], ["temperature", "humidity"]]
    assert cols["metric_values"] == [[4.0, 50.0], [51.0, 5.0], [6.0, 52.0]]
    assert cols["seq"] == [0, 1, 2] and cols["ingest_ts"] == [1.7e9] * 3
