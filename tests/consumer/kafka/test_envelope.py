"""Envelopes taken off before decoding: Schema Registry framing, BOM, Kafka Connect, CloudEvents
structured, Dapr; each recognised positively, parsed with bounded nesting."""

from __future__ import annotations

import base64
import contextlib
import json

import pytest

from consumer.kafka.codec import decode_record, salvage_request_id
from consumer.kafka.envelope import identify_foreign, json_depth_exceeds, load_json, unwrap
from schemas.errors import InvalidEvent

REQUEST = {"request_id": "env-1", "image": "s3://in/a.png", "prompt": "make it blue"}
RAW = json.dumps(REQUEST).encode()
CE = {"specversion": "1.0", "id": "evt-7", "source": "/shop/catalog", "type": "com.example.edit.requested"}
STRUCTURED = [("content-type", b"application/cloudevents+json; charset=UTF-8")]


def test_a_plain_request_is_unchanged() -> None:
    assert unwrap(RAW) == unwrap(RAW, [])
    assert unwrap(RAW).body == RAW
    assert unwrap(RAW).cloudevent == {}


def test_schema_registry_framing_and_a_bom_are_stripped() -> None:
    framed = b"\x00\x00\x00\x01\x2a" + RAW
    assert unwrap(framed).body == RAW
    assert unwrap(b"\xef\xbb\xbf" + RAW).body == RAW
    assert unwrap(b"\x00\x00\x00\x00\x07" + b"\xef\xbb\xbf" + RAW).body == RAW


def test_structured_cloudevent_by_content_type_unwraps_data_and_echoes_its_attributes() -> None:
    event = json.dumps({**CE, "datacontenttype": "application/json", "data": REQUEST}).encode()
    unwrapped = unwrap(event, STRUCTURED)
    assert json.loads(unwrapped.body) == REQUEST
    assert unwrapped.cloudevent == {
        "ce_id": "evt-7",
        "ce_source": "/shop/catalog",
        "ce_type": "com.example.edit.requested",
    }


def test_structured_cloudevent_is_recognised_without_the_header() -> None:
    event = json.dumps({**CE, "data": REQUEST}).encode()
    assert json.loads(unwrap(event).body) == REQUEST
    assert json.loads(unwrap(b"\n  " + event).body) == REQUEST


def test_dapr_default_envelope() -> None:
    dapr = {
        "specversion": "1.0",
        "id": "5929aaac-a5e2-4ca1-859c-edfe73f11565",
        "source": "checkout",
        "type": "com.dapr.event.sent",
        "topic": "edit.requests",
        "pubsubname": "kafka-pubsub",
        "traceid": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "tracestate": "",
        "datacontenttype": "application/json",
        "data": REQUEST,
    }
    unwrapped = unwrap(json.dumps(dapr).encode(), STRUCTURED)
    assert json.loads(unwrapped.body) == REQUEST
    assert unwrapped.cloudevent["ce_type"] == "com.dapr.event.sent"


def test_data_as_a_json_string_and_data_base64() -> None:
    as_string = json.dumps({**CE, "data": json.dumps(REQUEST)}).encode()
    assert json.loads(unwrap(as_string).body) == REQUEST
    as_base64 = json.dumps({**CE, "data_base64": base64.b64encode(RAW).decode()}).encode()
    assert unwrap(as_base64, STRUCTURED).body == RAW


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"not json", "must be a JSON object"),
        (json.dumps({**CE, "data": None}).encode(), "data is null"),
        (json.dumps(CE).encode(), "has no data"),
        (json.dumps({**CE, "data_base64": "%%%"}).encode(), "data_base64"),
        (json.dumps({"data": REQUEST}).encode(), "specversion"),
    ],
)
def test_a_broken_structured_cloudevent_is_invalid(value: bytes, message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        unwrap(value, STRUCTURED)


def test_a_request_that_merely_mentions_specversion_is_left_to_the_decoder() -> None:
    odd = json.dumps({**REQUEST, "specversion": "1.0"}).encode()
    assert unwrap(odd).body == odd


def test_binary_mode_attributes_are_echoed_from_the_headers() -> None:
    headers = [("ce_id", b"b-1"), ("ce_source", b"/src"), ("ce_type", b"t"), ("ce_specversion", b"1.0")]
    assert unwrap(RAW, headers).cloudevent == {"ce_id": "b-1", "ce_source": "/src", "ce_type": "t"}


def test_decode_record_adds_the_cloudevent_attributes_to_the_metadata() -> None:
    event = json.dumps({**CE, "data": {**REQUEST, "metadata": {"sku": "1", "ce_id": "mine"}}}).encode()
    request = decode_record(event, STRUCTURED, max_bytes=1 << 20)
    assert request.request_id == "env-1"
    assert request.metadata == {
        "sku": "1",
        "ce_id": "mine",  # the request's own key wins
        "ce_source": "/shop/catalog",
        "ce_type": "com.example.edit.requested",
    }


def test_decode_record_keeps_the_ignored_fields_and_bounds_the_whole_record() -> None:
    event = json.dumps({**CE, "data": {**REQUEST, "priority": "high"}}).encode()
    assert decode_record(event, None, max_bytes=1 << 20).ignored_fields == ("priority",)
    with pytest.raises(InvalidEvent, match="limited to 100 bytes"):
        decode_record(event, None, max_bytes=100)


def test_the_request_id_is_salvaged_from_inside_an_envelope() -> None:
    broken = json.dumps({**CE, "data": {"request_id": "inner-9", "image": 5}}).encode()
    assert salvage_request_id(broken, None) == "inner-9"
    assert salvage_request_id(b"\x00\x00\x00\x00\x01" + RAW, None) == "env-1"


# --- Kafka Connect's JsonConverter envelope (schemas.enable=true) -----------------------------------

CONNECT_SCHEMA = {
    "type": "struct",
    "fields": [
        {"field": "request_id", "type": "string", "optional": False},
        {"field": "image", "type": "string", "optional": False},
        {"field": "prompt", "type": "string", "optional": True},
    ],
    "optional": False,
    "name": "edit_request",
}


def test_kafka_connect_envelope_is_unwrapped() -> None:
    envelope = json.dumps({"schema": CONNECT_SCHEMA, "payload": REQUEST}).encode()
    unwrapped = unwrap(envelope)
    assert json.loads(unwrapped.body) == REQUEST
    assert unwrapped.cloudevent == {}
    assert decode_record(envelope, None, max_bytes=1 << 20).request_id == "env-1"


def test_kafka_connect_envelope_with_a_string_payload_holding_the_request() -> None:
    envelope = json.dumps({"schema": {"type": "string", "optional": False}, "payload": json.dumps(REQUEST)})
    assert json.loads(unwrap(envelope.encode()).body) == REQUEST
    assert decode_record(b"\x00\x00\x00\x00\x03" + envelope.encode(), None, max_bytes=1 << 20).image == (
        "s3://in/a.png"
    )


def test_kafka_connect_envelope_with_a_null_payload_is_refused_saying_so() -> None:
    with pytest.raises(InvalidEvent, match="Kafka Connect envelope's payload is null"):
        unwrap(json.dumps({"schema": CONNECT_SCHEMA, "payload": None}).encode())


@pytest.mark.parametrize(
    "value",
    [
        {**REQUEST, "schema": CONNECT_SCHEMA, "payload": {"x": 1}},  # more than the two members
        {"schema": {"name": "no type"}, "payload": REQUEST},  # not a Connect schema
        {"schema": "struct", "payload": REQUEST},
        {"payload": REQUEST},
    ],
)
def test_only_an_exact_connect_envelope_is_unwrapped(value: dict[str, object]) -> None:
    body = json.dumps(value).encode()
    assert unwrap(body).body == body


# --- recognising envelopes positively -----------------------------------------------------------------


@pytest.mark.parametrize("missing", ["id", "source", "type"])
def test_without_the_content_type_a_cloudevent_needs_every_required_attribute(missing: str) -> None:
    event = {**CE, "data": REQUEST}
    del event[missing]
    body = json.dumps(event).encode()
    assert unwrap(body).body == body  # left to the decoder, which names what is wrong


def test_a_request_with_fields_named_like_cloudevents_attributes_is_not_an_envelope() -> None:
    odd = json.dumps({**REQUEST, "specversion": "1.0", "data": {"x": 1}}).encode()
    assert unwrap(odd).body == odd


def test_a_valid_request_is_never_taken_for_a_schema_registry_frame() -> None:
    for value in (RAW, b" " + RAW, b"\xef\xbb\xbf" + RAW, json.dumps({**CE, "data": REQUEST}).encode()):
        assert unwrap(value).schema_id is None
    assert unwrap(b"\x00\x00\x00\x01\x2a" + RAW).schema_id == 298
    assert unwrap(b"\x00\x00\x00\x01\x2a" + RAW).body == RAW
    assert unwrap(b"\x00\x01").body == b"\x00\x01"  # too short to be a frame: the decoder says why


# --- bounded JSON --------------------------------------------------------------------------------------


def test_json_depth_is_measured_outside_strings() -> None:
    assert not json_depth_exceeds(b"[" * 64 + b"]" * 64)
    assert json_depth_exceeds(b"[" * 65 + b"]" * 65)
    assert json_depth_exceeds(b"[" * 65)  # unclosed: still too deep before it is found invalid
    in_a_string = json.dumps({"prompt": "[{" * 10_000 + '\\"[' * 100}).encode()
    assert not json_depth_exceeds(in_a_string)
    siblings = json.dumps([[1], [2]] * 10_000).encode()  # many brackets, shallow
    assert not json_depth_exceeds(siblings)
    assert not json_depth_exceeds(b'["' + b"[" * 1000)  # an unterminated string: the parser refuses it


@pytest.mark.parametrize(
    "value", [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000, b"\xff", b"{"]
)
def test_load_json_refuses_with_invalid_event_only(value: bytes) -> None:
    with pytest.raises(InvalidEvent):
        load_json(value)


@pytest.mark.parametrize(
    "headers", [None, STRUCTURED, [("content-type", b"application/cloudevents+json"), ("ce_id", b"1")]]
)
def test_unwrap_refuses_a_bomb_inside_an_envelope_with_invalid_event_only(
    headers: list[tuple[str, bytes]] | None,
) -> None:
    bomb = b"[" * 100_000 + b"]" * 100_000
    for value in (
        b'{"specversion": "1.0", "id": "1", "source": "s", "type": "t", "data": ' + bomb + b"}",
        b'{"schema": {"type": "array"}, "payload": ' + bomb + b"}",
    ):
        with contextlib.suppress(InvalidEvent):  # a refusal is fine; anything else fails the test
            unwrap(value, headers)


def test_a_data_string_with_a_lone_surrogate_reaches_the_decoder_as_bytes() -> None:
    event = json.dumps({**CE, "data": '{"request_id": "\ud800"}'}).encode()
    with pytest.raises(InvalidEvent):
        decode_record(event, None, max_bytes=1 << 20)


# --- what a record is, when it is no request ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "what"),
    [
        ({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectRemoved:Delete", "s3": {}}]}, "S3 event"),
        ({"Records": [{"s3": {"bucket": {"name": "b"}}}]}, "S3 event"),
        ({"Service": "Amazon S3", "Event": "s3:TestEvent"}, "S3 test event"),
        ({"source": "aws.s3", "detail-type": "Object Created", "detail": {}}, "EventBridge S3 event"),
    ],
)
def test_identify_foreign(value: object, what: str) -> None:
    assert what in (identify_foreign(value) or "")


@pytest.mark.parametrize(
    "value", [REQUEST, [], "x", None, {"Records": []}, {"Records": ["x"]}, {"source": "aws.s3"}]
)
def test_identify_foreign_knows_nothing_of_anything_else(value: object) -> None:
    assert identify_foreign(value) is None
