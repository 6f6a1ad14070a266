"""Envelopes taken off before decoding: Schema Registry framing, BOM, CloudEvents structured, Dapr."""

from __future__ import annotations

import base64
import json

import pytest

from consumer.kafka.codec import decode_record, salvage_request_id
from consumer.kafka.envelope import unwrap
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
