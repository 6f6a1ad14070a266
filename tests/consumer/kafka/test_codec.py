"""Wire bytes to models: every decode failure is an InvalidEvent naming the field; ids are salvaged safely."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from consumer.kafka import clients as kafka_io
from consumer.kafka.codec import (
    decode_event,
    decode_request,
    describe_validation_error,
    encode_event,
    salvage_request_id,
)
from schemas.control import CancelRequested
from schemas.errors import ErrorCode, InvalidEvent
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
        negative_prompt="blurry",
        priority={"tier": "gold"},
        output={"format": "webp", "dpi": 300},
        recolor=[{"target": "the sneakers", "color": "#1E90FF", "finish": "matte"}],
    )
    request = decode_request(body, max_bytes=MAX)
    assert set(request.ignored_fields) == {"negative_prompt", "priority", "output.dpi", "recolor[0].finish"}
    assert request.output is not None
    assert request.output.format.value == "webp"
    assert request.recolor is not None
    assert request.recolor[0].hex6 == "#1E90FF"
    assert "negative_prompt" not in request.model_dump_json()  # never on the wire again


@pytest.mark.parametrize("name", ["priority", "output_dpi", "negative_prompt", "tenant", "trace_id"])
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
        decode_request(raw(negative_prompt="x", priority=1), max_bytes=MAX, strict=True)
    assert info.value.message == (
        "negative_prompt: unknown field (the worker rejects unknown fields); "
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
