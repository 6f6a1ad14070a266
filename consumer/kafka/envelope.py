"""What platforms wrap around a request, taken off before the request is decoded; what they send
instead of one, recognised so that its refusal can say what it is.

Applied in this order to a record's value (`unwrap`):

1. Confluent Schema Registry framing: magic byte `0x00` + 4-byte schema id before the JSON (the JSON
   Schema serializer writes it). JSON text never starts with `0x00`, so the frame is stripped when
   present; its schema id is kept, so that a frame whose body is not JSON (Avro, Protobuf) is refused
   as what it is.
2. A UTF-8 byte-order mark (`EF BB BF`, what .NET and some editors write) is stripped.
3. Kafka Connect's JsonConverter envelope (`schemas.enable=true`, the default of many Connect
   pipelines): exactly `{"schema": {"type": ...}, "payload": ...}`; the request is its `payload` (an
   object, or a string holding the JSON).
4. CloudEvents structured mode (`content-type: application/cloudevents+json`, or, without that header,
   a JSON object with the required attributes `specversion`, `id`, `source`, `type` and a `data` or
   `data_base64`), which is also Dapr's default pub/sub envelope: the request is its `data` (an
   object, or a string holding the JSON) or its base64 `data_base64`.

Each envelope is recognised positively, by every member its format requires, so an edit request is
never taken for one: a request has `request_id`, which neither envelope has at its top level (a
CloudEvents attribute name is lower-case letters and digits only).

The CloudEvents `id`, `source` and `type` (from the structured event, or from the `ce_id`,
`ce_source`, `ce_type` headers of binary mode) are returned, to be echoed in the result's metadata
under the same names.

Producer bytes are parsed here only through `load_json`, which bounds nesting first
(`MAX_JSON_DEPTH`): Python's `json` recurses once per level and raises `RecursionError` on a
`[[[...]]]` record of a few hundred kilobytes (the JSON bomb of CVE-2024-27454).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from schemas.errors import InvalidEvent

SCHEMA_REGISTRY_MAGIC = b"\x00"
SCHEMA_REGISTRY_HEADER_BYTES = 5  # magic byte + big-endian 4-byte schema id
UTF8_BOM = b"\xef\xbb\xbf"
CLOUDEVENTS_JSON = "application/cloudevents+json"
# CloudEvents attributes echoed in the result's metadata, by metadata key (the Kafka binding's names).
ECHOED = {"ce_id": "id", "ce_source": "source", "ce_type": "type"}
# The attributes every CloudEvent carries (CloudEvents 1.0, "REQUIRED Attributes").
CLOUDEVENTS_REQUIRED = ("specversion", "id", "source", "type")
# How deep arrays and objects may nest in a record. An edit request nests 3 levels
# (`recolor[0].color`), 4 in a CloudEvent and 5 in a Connect envelope; 64 leaves room for any
# envelope and stays far below Python's recursion limit (1000) and pydantic-core's (200).
MAX_JSON_DEPTH = 64


@dataclass(frozen=True)
class Unwrapped:
    """The request's JSON bytes, the CloudEvents attributes to echo (`{"ce_id": ..., ...}`), and the
    schema id of the Schema Registry frame the value came in (None: no frame)."""

    body: bytes
    cloudevent: dict[str, str] = field(default_factory=dict)
    schema_id: int | None = None


def unwrap(raw: bytes, headers: Iterable[tuple[str, bytes | None]] | None = None) -> Unwrapped:
    """Take the envelope off a record value; raises `InvalidEvent` for a broken envelope.

    A value without any envelope comes back unchanged. `headers` are the record's headers (for the
    structured-mode content type and the binary-mode `ce_*` attributes).
    """
    found = _headers(headers)
    schema_id = schema_registry_id(raw)
    body = strip_framing(raw)
    echoed = {key: found[key] for key in ECHOED if found.get(key)}
    if found.get("content-type", "").lower().startswith(CLOUDEVENTS_JSON):
        event = _structured_event(body)
        echoed.update(_attributes(event))
        return Unwrapped(_data(event), echoed, schema_id)
    stripped = body.lstrip()
    if stripped[:1] != b"{" or not (b'"payload"' in body or b'"specversion"' in body):
        return Unwrapped(body, echoed, schema_id)  # no envelope can be there: nothing to parse
    try:
        value = load_json(body)
    except InvalidEvent:
        return Unwrapped(body, echoed, schema_id)  # the request decoder says why
    if is_connect_envelope(value):
        return Unwrapped(_connect_payload(value), echoed, schema_id)
    if is_cloudevent(value):
        echoed.update(_attributes(value))
        return Unwrapped(_data(value), echoed, schema_id)
    return Unwrapped(body, echoed, schema_id)  # e.g. a request with a field named specversion


def strip_framing(raw: bytes) -> bytes:
    """Strip a Schema Registry frame, then a UTF-8 BOM, when present."""
    if schema_registry_id(raw) is not None:
        raw = raw[SCHEMA_REGISTRY_HEADER_BYTES:]
    return raw.removeprefix(UTF8_BOM)


def schema_registry_id(raw: bytes) -> int | None:
    """The schema id of a Confluent Schema Registry frame (`0x00` + 4-byte big-endian id + body)."""
    if raw[:1] == SCHEMA_REGISTRY_MAGIC and len(raw) > SCHEMA_REGISTRY_HEADER_BYTES:
        return int.from_bytes(raw[1:SCHEMA_REGISTRY_HEADER_BYTES], "big")
    return None


def is_connect_envelope(value: Any) -> bool:
    """Kafka Connect JsonConverter's `schemas.enable=true` envelope: exactly `schema` (a Connect
    schema, which always has `type`) and `payload`."""
    return (
        isinstance(value, dict)
        and value.keys() == {"schema", "payload"}
        and isinstance(value["schema"], dict)
        and "type" in value["schema"]
    )


def is_cloudevent(value: Any) -> bool:
    """A structured CloudEvent recognised without its content type: every required attribute, and data."""
    return (
        isinstance(value, dict)
        and isinstance(value.get("specversion"), str)
        and all(name in value for name in CLOUDEVENTS_REQUIRED)
        and ("data" in value or "data_base64" in value)
    )


def identify_foreign(value: Any) -> str | None:
    """What a parsed record that is no edit request is, when it is something platforms commonly send
    to the wrong topic, e.g. `"an S3 event notification (ObjectCreated:Put)"`; None when unknown."""
    if not isinstance(value, dict):
        return None
    records = value.get("Records")
    if isinstance(records, list) and records and isinstance(records[0], dict):
        first = records[0]
        source = first.get("eventSource") or first.get("EventSource")
        if source == "aws:s3" or isinstance(first.get("s3"), dict):
            name = first.get("eventName")
            return "an S3 event notification" + (f" ({str(name)[:64]})" if isinstance(name, str) else "")
        if isinstance(source, str) and source.startswith("aws:"):
            return f"an AWS event notification from {source[:64]}"
    if value.get("Event") == "s3:TestEvent":
        return "an S3 test event (S3 sends one when a bucket's notifications are configured)"
    if value.get("source") == "aws.s3" and "detail-type" in value:
        return f"an Amazon EventBridge S3 event ({str(value['detail-type'])[:64]})"
    return None


def json_depth_exceeds(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether arrays and objects in the JSON text `raw` nest deeper than `limit`, found without parsing.

    One linear pass (brackets inside strings do not count); immediate when `raw` holds no more than
    `limit` brackets. Text that is not JSON may get either answer: the parser refuses it anyway.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    depth = 0
    for token in _JSON_TOKENS.finditer(raw):
        first = raw[token.start()]
        if first == _QUOTE:
            if token.end() - token.start() == 1:
                return False  # an unterminated string: not JSON
        elif first in _OPENERS:
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


# A whole JSON string (escapes included), a lone quote (an unterminated string), or a bracket.
_JSON_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|"|[\[\]{}]', re.DOTALL)
_QUOTE = ord('"')
_OPENERS = (ord("["), ord("{"))


def load_json(raw: bytes) -> Any:
    """Parse producer bytes as JSON; raises `InvalidEvent` for any failure, never anything else.

    Nesting is bounded first (`MAX_JSON_DEPTH`); a failure of the parser itself (`ValueError`,
    `UnicodeDecodeError`, a `RecursionError` or `MemoryError` all the same) refuses the record.
    """
    if json_depth_exceeds(raw):
        raise InvalidEvent(too_deep_message())
    try:
        return json.loads(raw)
    except Exception as exc:
        raise InvalidEvent(f"record is not valid JSON: {type(exc).__name__}: {str(exc)[:200]}") from exc


def too_deep_message() -> str:
    return f"record nests JSON arrays and objects more than {MAX_JSON_DEPTH} deep (the limit)"


def _structured_event(body: bytes) -> dict[str, Any]:
    """The event of a record whose content type says it is a structured CloudEvent."""
    try:
        event = load_json(body)
    except InvalidEvent as exc:
        raise InvalidEvent(f"a structured CloudEvent must be a JSON object: {exc.message}") from exc
    if not isinstance(event, dict) or "specversion" not in event:
        raise InvalidEvent("a structured CloudEvent must be a JSON object with specversion")
    if "data" not in event and "data_base64" not in event:
        raise InvalidEvent("the CloudEvent has no data: the edit request goes in data")
    return event


def _attributes(event: dict[str, Any]) -> dict[str, str]:
    return {key: str(event[name])[:1024] for key, name in ECHOED.items() if event.get(name)}


def _data(event: dict[str, Any]) -> bytes:
    if "data_base64" in event:
        try:
            return strip_framing(base64.b64decode(str(event["data_base64"]), validate=True))
        except (binascii.Error, ValueError) as exc:
            raise InvalidEvent(f"data_base64: not valid base64 ({exc})") from exc
    data = event["data"]
    if data is None:
        raise InvalidEvent("the CloudEvent's data is null: the edit request goes in data")
    if isinstance(data, str):
        return strip_framing(data.encode("utf-8", "surrogatepass"))  # the request as a JSON string
    return json.dumps(data).encode("utf-8")


def _connect_payload(envelope: dict[str, Any]) -> bytes:
    payload = envelope["payload"]
    if payload is None:
        raise InvalidEvent("the Kafka Connect envelope's payload is null: the edit request goes in payload")
    if isinstance(payload, str):
        return strip_framing(
            payload.encode("utf-8", "surrogatepass")
        )  # a string schema holding the request's JSON
    return json.dumps(payload).encode("utf-8")


def _headers(headers: Iterable[tuple[str, bytes | None]] | None) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in headers or ():
        if value is not None:
            found[key.lower()] = bytes(value).decode("utf-8", "replace")
    return found
