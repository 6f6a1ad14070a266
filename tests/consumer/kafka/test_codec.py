"""Wire bytes to models: every decode failure is an InvalidEvent naming the field; ids are salvaged safely."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from pydantic import ValidationError

from consumer.kafka import clients as kafka_io
from consumer.kafka.codec import (
    EXPECTED,
    REQUEST_SCHEMA,
    decode_event,
    decode_record,
    decode_request,
    describe_validation_error,
    encode_event,
    salvage_request_id,
)
from consumer.kafka.envelope import MAX_JSON_DEPTH
from schemas.control import CancelRequested
from schemas.errors import ErrorCode, InvalidEvent
from schemas.export import PUBLISHED_DIR, WIRE_EVENTS
from schemas.requests import EditRequest

MAX = 1_048_576
BASE: dict[str, Any] = {"request_id": "req-1", "image": "inputs/shoe.png", "prompt": "make it sunny"}


def raw(**changes: Any) -> bytes:
    return json.dumps({**BASE, **changes}).encode()


def problem(value: bytes | None, *, max_bytes: int = MAX) -> str:
    with pytest.raises(InvalidEvent) as info:
        decode_request(value, max_bytes=max_bytes)
    error = info.value
    assert error.code is ErrorCode.INVALID_EVENT
    assert error.retryable is False
    return error.message


def test_decodes_a_valid_request() -> None:
    request = decode_request(raw(recolor=[{"target": "the sneakers", "color": "#1E90FF"}]), max_bytes=MAX)
    assert isinstance(request, EditRequest)
    assert request.request_id == "req-1"
    assert request.recolor is not None
    assert request.recolor[0].hex6 == "#1E90FF"


def test_tombstone_is_invalid() -> None:
    message = problem(None)
    assert "tombstone" in message
    assert "no value" in message


def test_oversized_record_is_rejected_before_parsing() -> None:
    body = raw(prompt="p" * 100)
    message = problem(body, max_bytes=len(body) - 1)
    assert message == f"record is {len(body)} bytes; requests are limited to {len(body) - 1} bytes"
    assert decode_request(body, max_bytes=len(body)).prompt == "p" * 100  # exactly at the limit is fine


def test_oversized_garbage_is_reported_as_oversized_not_as_bad_json() -> None:
    assert "bytes; requests are limited to 10 bytes" in problem(b"x" * 11, max_bytes=10)


@pytest.mark.parametrize(
    "value", [b"", b"{", b"not json", b"{'single': 'quotes'}", b"\xff\xfe\x00", b'{"a":1,}']
)
def test_not_json(value: bytes) -> None:
    assert problem(value).startswith("record is not valid JSON")


@pytest.mark.parametrize("value", [b"[]", b"null", b"42", b'"req-1"', b"true"])
def test_json_that_is_not_an_object(value: bytes) -> None:
    assert problem(value) == "record must be a JSON object"


@pytest.mark.parametrize(
    ("changes", "prefix"),
    [
        ({"recolor": [{"target": "the sneakers", "color": "blue"}]}, "recolor[0].color: "),
        (
            {"recolor": [{"target": "a", "color": "#fff"}, {"target": "", "color": "#fff"}]},
            "recolor[1].target: ",
        ),
        ({"num_inference_steps": 51}, "num_inference_steps: "),
        ({"guidance_scale": -1}, "guidance_scale: "),
        ({"seed": -1}, "seed: "),
        ({"request_id": "a b"}, "request_id: "),
        ({"references": ["ok", ""]}, "references[1]: "),
        ({"output": {"format": "gif"}}, "output.format: "),
        ({"deadline": "2026-01-01T12:00:00"}, "deadline: "),
        ({"schema_version": 2}, "schema_version: "),
        ({"promt": "typo"}, "promt: "),
        ({"width": 1000, "height": 512}, "width: "),
        ({"metadata": {"k": 1}}, "metadata.k: "),
    ],
)
def test_field_errors_name_the_field(changes: dict[str, Any], prefix: str) -> None:
    message = problem(raw(**changes))
    assert message.startswith(prefix), message
    assert ";" not in message


def test_missing_required_field() -> None:
    body = json.dumps({"request_id": "req-1", "prompt": "p"}).encode()
    assert problem(body) == "image: Field required"


# ---------------------------------------------------------------------------------------------------
# Schema evolution: unknown fields are ignored and reported, near-misses of known fields are rejected


def test_unknown_fields_at_any_depth_are_ignored_and_remembered() -> None:
    body = raw(
        style_preset="blurry",
        priority={"tier": "gold"},
        output={"format": "webp", "dpi": 300},
        recolor=[{"target": "the sneakers", "color": "#1E90FF", "finish": "matte"}],
    )
    request = decode_request(body, max_bytes=MAX)
    assert set(request.ignored_fields) == {"style_preset", "priority", "output.dpi", "recolor[0].finish"}
    assert request.output is not None
    assert request.output.format.value == "webp"
    assert request.recolor is not None
    assert request.recolor[0].hex6 == "#1E90FF"
    assert "style_preset" not in request.model_dump_json()  # never on the wire again


@pytest.mark.parametrize("name", ["priority", "output_dpi", "style_preset", "tenant", "trace_id"])
def test_a_new_field_that_is_no_near_miss_is_ignored(name: str) -> None:
    assert decode_request(raw(**{name: "x"}), max_bytes=MAX).ignored_fields == (name,)


def test_a_known_request_has_no_ignored_fields() -> None:
    assert decode_request(raw(), max_bytes=MAX).ignored_fields == ()


@pytest.mark.parametrize(
    ("changes", "unknown", "known"),
    [
        ({"num_inference_step": 30}, "num_inference_step", "num_inference_steps"),
        ({"numInferenceSteps": 30}, "numInferenceSteps", "num_inference_steps"),
        ({"Seed": 7}, "Seed", "seed"),
        ({"guidance-scale": 2.0}, "guidance-scale", "guidance_scale"),
        ({"output": {"formt": "jpeg"}}, "output.formt", "format"),
        ({"recolor": [{"target": "t", "colour": "#FFF"}]}, "recolor[0].colour", "color"),
    ],
)
def test_a_near_miss_of_a_known_field_is_rejected_naming_both(
    changes: dict[str, Any], unknown: str, known: str
) -> None:
    message = problem(raw(**changes))
    assert message.startswith(f"{unknown}: unknown field, did you mean {known!r}?"), message


def test_other_errors_are_reported_without_the_ignored_fields() -> None:
    assert problem(raw(priority="high", seed=-1)).startswith("seed: ")


def test_strict_mode_rejects_every_unknown_field() -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_request(raw(style_preset="x", priority=1), max_bytes=MAX, strict=True)
    assert info.value.message == (
        "style_preset: unknown field (the worker rejects unknown fields); "
        "priority: unknown field (the worker rejects unknown fields)"
    )
    assert decode_request(raw(), max_bytes=MAX, strict=True).ignored_fields == ()


def test_cross_field_errors_are_attributed_to_the_request() -> None:
    body = json.dumps({"request_id": "req-1", "image": "a.png"}).encode()
    assert problem(body) == "request: Value error, either prompt or recolor is required"
    assert problem(raw(width=512)) == "request: Value error, width and height must be given together"


def test_several_problems_are_listed_each_with_its_field() -> None:
    message = problem(
        raw(num_inference_steps=10, recolor=[{"target": "x", "color": "blue"}], promt="x", extra=1)
    )
    parts = message.split("; ")
    assert sorted(part.split(":")[0] for part in parts) == [
        "num_inference_steps",
        "promt",
        "recolor[0].color",
    ]  # `extra` is merely unknown: not a problem


def test_the_validation_error_is_chained() -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_request(raw(seed=-1), max_bytes=MAX)
    assert isinstance(info.value.__cause__, ValidationError)


def test_describe_validation_error_formats_nested_paths() -> None:
    with pytest.raises(ValidationError) as info:
        EditRequest.model_validate({**BASE, "recolor": [{"target": "x", "color": "#fff"}, {"color": "bad"}]})
    assert describe_validation_error(info.value).split("; ") == [
        "recolor[1].target: Field required",
        "recolor[1].color: String should match pattern '^#(?:[0-9A-Fa-f]{6}|[0-9A-Fa-f]{3})$'",
    ]


def test_encode_event_round_trips() -> None:
    request = decode_request(
        raw(recolor=[{"target": "the bag", "color": "#000"}], seed=3, deadline="2026-01-01T00:00:00Z"),
        max_bytes=MAX,
    )
    encoded = encode_event(request)
    assert isinstance(encoded, bytes)
    assert decode_request(encoded, max_bytes=MAX) == request
    assert json.loads(encoded)["request_id"] == "req-1"


def test_encode_event_is_utf8_json() -> None:
    request = decode_request(raw(prompt="café ☕"), max_bytes=MAX)
    assert json.loads(encode_event(request).decode("utf-8"))["prompt"] == "café ☕"


# --- salvage_request_id ----------------------------------------------------------------------------


def test_salvage_from_json() -> None:
    assert salvage_request_id(json.dumps({"request_id": "req-7", "image": ""}).encode(), None) == "req-7"


def test_salvage_from_json_even_when_the_request_is_invalid() -> None:
    body = json.dumps({"request_id": "req-7", "num_inference_steps": 999, "junk": True}).encode()
    assert salvage_request_id(body, b"key-1") == "req-7"


def test_salvage_from_key_when_the_value_is_not_json() -> None:
    assert salvage_request_id(b"not json", b"key-1") == "key-1"
    assert salvage_request_id(b"\xff\xfe", b"key-1") == "key-1"
    assert salvage_request_id(None, b"key-1") == "key-1"
    assert salvage_request_id(b"", b"key-1") == "key-1"


def test_salvage_from_key_when_the_json_has_no_id() -> None:
    assert salvage_request_id(b'{"image": "a.png"}', b"key-1") == "key-1"
    assert salvage_request_id(b'["req-7"]', b"key-1") == "key-1"


@pytest.mark.parametrize(
    "hostile",
    [
        "../../etc/passwd",
        "a/b",
        "has space",
        "",
        "x" * 129,
        "réq",
        "id\n",
        "id\r\nX-Injected: 1",
        123,
        None,
        ["a"],
    ],
)
def test_hostile_json_ids_are_ignored(hostile: object) -> None:
    body = json.dumps({"request_id": hostile}).encode()
    assert salvage_request_id(body, b"key-1") == "key-1"
    assert salvage_request_id(body, None) is None


@pytest.mark.parametrize("key", [b"a/b", b"../x", b"\xff\xfe", b"has space", b"x" * 129, b"", "réq".encode()])
def test_hostile_keys_are_ignored(key: bytes) -> None:
    assert salvage_request_id(b"garbage", key) is None


def test_nothing_to_salvage() -> None:
    assert salvage_request_id(None, None) is None


def test_every_kafka_batch_codec_is_decodable_in_this_install() -> None:
    kafka_io.require_codecs()  # raises naming what is missing (cramjam: snappy, lz4, zstd)
    assert set(kafka_io.CODECS) == {"gzip", "snappy", "lz4", "zstd"}


def test_results_and_cancels_from_a_newer_publisher_are_read_too() -> None:
    cancel = decode_event(CancelRequested, b'{"request_id": "r-1", "action": "cancel", "reason": "user"}')
    assert cancel.request_id == "r-1"
    with pytest.raises(InvalidEvent, match="did you mean 'request_id'"):
        decode_event(CancelRequested, b'{"requestid": "r-1", "action": "cancel"}')


# --- hostile records: every decode refuses, nothing escapes -----------------------------------------

BOMB = b"[" * 100_000 + b"]" * 100_000  # 200 KB, under the size limit (the JSON bomb of CVE-2024-27454)
DEEP_OBJECT = b'{"a":' * 100_000 + b"1" + b"}" * 100_000


@pytest.mark.parametrize("value", [BOMB, DEEP_OBJECT])
def test_deep_nesting_is_refused_before_parsing(value: bytes) -> None:
    assert (
        problem(value) == f"record nests JSON arrays and objects more than {MAX_JSON_DEPTH} deep (the limit)"
    )


def test_nesting_up_to_the_limit_is_parsed() -> None:
    nested: Any = "x"
    for _ in range(MAX_JSON_DEPTH - 1):
        nested = {"k": nested}
    body = raw(extra=nested)  # the request object itself is one level
    assert decode_request(body, max_bytes=MAX).ignored_fields == ("extra",)
    deeper = raw(extra={"k": nested})
    assert "more than 64 deep" in problem(deeper)


@pytest.mark.parametrize("headers", [None, [("content-type", b"application/cloudevents+json")]])
@pytest.mark.parametrize(
    "value",
    [
        BOMB,
        DEEP_OBJECT,
        b'{"specversion": "1.0", "id": "1", "source": "s", "type": "t", "data": ' + BOMB + b"}",
        b'{"schema": {"type": "struct"}, "payload": ' + DEEP_OBJECT + b"}",
        b"\x00\x00\x00\x00\x01" + BOMB,
    ],
)
def test_no_record_makes_decode_record_raise_anything_but_invalid_event(
    value: bytes, headers: list[tuple[str, bytes]] | None
) -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_record(value, headers, max_bytes=MAX)
    assert info.value.code is ErrorCode.INVALID_EVENT


def test_an_unforeseen_failure_while_decoding_is_a_refusal_not_a_crash() -> None:
    class Exploding(CancelRequested):
        @classmethod
        def model_validate_json(cls, *args: Any, **kwargs: Any) -> Any:
            raise RecursionError("maximum recursion depth exceeded")

    with pytest.raises(InvalidEvent, match="RecursionError") as info:
        decode_event(Exploding, b'{"request_id": "r-1", "action": "cancel"}')
    assert isinstance(info.value.__cause__, RecursionError)


@pytest.mark.parametrize("value", [BOMB, DEEP_OBJECT, b'{"request_id": ' + BOMB + b"}"])
def test_salvage_never_raises_and_falls_back_to_the_key(value: bytes) -> None:
    assert salvage_request_id(value, b"key-1") == "key-1"
    assert salvage_request_id(value, None) is None
    framed = b"\x00\x00\x00\x00\x01" + value
    assert (
        salvage_request_id(framed, b"key-1", [("content-type", b"application/cloudevents+json")]) == "key-1"
    )


def test_salvage_ignores_a_huge_key() -> None:
    assert salvage_request_id(b"garbage", b"k" * 5_000_000) is None


def test_a_deep_record_is_refused_quickly() -> None:
    started = time.perf_counter()
    for _ in range(10):
        with pytest.raises(InvalidEvent):
            decode_record(BOMB, None, max_bytes=MAX)
        salvage_request_id(BOMB, None)
    assert time.perf_counter() - started < 5.0  # milliseconds each in practice; generous for CI


# --- refusals say what the record is ---------------------------------------------------------------

S3_NOTIFICATION = {
    "Records": [
        {
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "awsRegion": "eu-west-1",
            "eventTime": "2026-01-01T12:00:00.000Z",
            "eventName": "ObjectCreated:Put",
            "s3": {
                "s3SchemaVersion": "1.0",
                "bucket": {"name": "uploads", "arn": "arn:aws:s3:::uploads"},
                "object": {"key": "shoes/red+shoe.png", "size": 1024, "eTag": "abc"},
            },
        }
    ]
}


@pytest.mark.parametrize(
    ("event", "what"),
    [
        (S3_NOTIFICATION, "an S3 event notification (ObjectCreated:Put)"),
        (
            {"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": "2026-01-01T12:00:00Z", "Bucket": "b"},
            "an S3 test event",
        ),
        (
            {"version": "0", "source": "aws.s3", "detail-type": "Object Created", "detail": {}},
            "an Amazon EventBridge S3 event (Object Created)",
        ),
        ({"Records": [{"eventSource": "aws:sqs", "body": "{}"}]}, "an AWS event notification from aws:sqs"),
    ],
)
def test_a_record_of_another_kind_is_refused_as_what_it_is(event: dict[str, Any], what: str) -> None:
    message = problem(json.dumps(event).encode())
    assert message.startswith(f"not an edit request: {what}"), message
    assert REQUEST_SCHEMA in message
    assert "request_id" not in message  # not "request_id: Field required"


def test_the_expected_schema_named_in_refusals_is_the_published_one() -> None:
    assert REQUEST_SCHEMA in WIRE_EVENTS
    assert WIRE_EVENTS[REQUEST_SCHEMA] is EditRequest
    assert (PUBLISHED_DIR / f"{REQUEST_SCHEMA}.schema.json").is_file()
    assert f"schemas/jsonschema/{REQUEST_SCHEMA}.schema.json" in EXPECTED


@pytest.mark.parametrize(
    "body",
    [
        b"\x02\x0ahello\x00",  # Avro binary
        b"\x00\x0a\x05r-1\x12\x05a.png",  # Protobuf: message index 0, then fields
        b"\xff\xfe\xfd",
    ],
)
def test_a_schema_registry_frame_whose_body_is_not_json_is_refused_as_what_it_is(body: bytes) -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_record(b"\x00\x00\x00\x01\x2a" + body, None, max_bytes=MAX)
    assert info.value.message.startswith(
        "not an edit request: a Confluent Schema Registry frame (schema id 298) whose body is not JSON: "
        "Avro or Protobuf?"
    ), info.value.message
    assert REQUEST_SCHEMA in info.value.message


def test_a_schema_registry_frame_around_json_is_judged_on_its_json() -> None:
    framed = b"\x00\x00\x00\x01\x2a" + raw()
    assert decode_record(framed, None, max_bytes=MAX).request_id == "req-1"
    message = decode_problem(b"\x00\x00\x00\x01\x2a" + raw(seed=-1))
    assert message.startswith("seed: "), message  # a JSON body's own fault, not the frame


def test_plain_json_and_its_faults_are_never_taken_for_a_frame_or_a_foreign_event() -> None:
    assert decode_record(raw(), None, max_bytes=MAX).request_id == "req-1"
    assert decode_problem(b"not json").startswith("record is not valid JSON")
    # A request that happens to carry a field named Records is judged as a request.
    assert decode_record(raw(Records=[{"eventSource": "aws:s3"}]), None, max_bytes=MAX).ignored_fields == (
        "Records",
    )


def decode_problem(value: bytes) -> str:
    with pytest.raises(InvalidEvent) as info:
        decode_record(value, None, max_bytes=MAX)
    return info.value.message


@pytest.mark.parametrize(
    ("field", "value", "what"),
    [
        ("guidance_scale", "NaN", "guidance_scale: not a number (NaN); a finite number is required"),
        ("guidance_scale", "Infinity", "guidance_scale: infinite"),
        ("guidance_scale", "-Infinity", "guidance_scale: infinite"),
        ("guidance_scale", "1e999", "guidance_scale: infinite"),
        ("loras", '[{"uri": "a.safetensors", "scale": NaN}]', "loras[0].scale: not a number (NaN)"),
    ],
)
def test_nan_and_infinity_are_named_not_compared(field: str, value: str, what: str) -> None:
    body = json.dumps(BASE)[:-1] + f', "{field}": {value}}}'
    message = problem(body.encode())
    assert message.startswith(what), message
    assert "less than" not in message
    assert "greater than" not in message
