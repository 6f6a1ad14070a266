"""What platforms wrap around a request, taken off before the request is decoded.

Applied in this order to a record's value (`unwrap`):

1. Confluent Schema Registry framing: magic byte `0x00` + 4-byte schema id before the JSON (the JSON
   Schema serializer writes it). JSON never starts with `0x00`, so the frame is stripped when present.
2. A UTF-8 byte-order mark (`EF BB BF`, what .NET and some editors write) is stripped.
3. CloudEvents structured mode (`content-type: application/cloudevents+json`, or a JSON object with
   `specversion` and `data` or `data_base64`), which is also Dapr's default pub/sub envelope: the
   request is its `data` (an object, or a string holding the JSON) or its base64 `data_base64`.

The CloudEvents `id`, `source` and `type` (from the structured event, or from the `ce_id`,
`ce_source`, `ce_type` headers of binary mode) are returned, to be echoed in the result's metadata
under the same names.
"""

from __future__ import annotations

import base64
import binascii
import json
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


@dataclass(frozen=True)
class Unwrapped:
    """The request's JSON bytes, and the CloudEvents attributes to echo (`{"ce_id": ..., ...}`)."""

    body: bytes
    cloudevent: dict[str, str] = field(default_factory=dict)


def unwrap(raw: bytes, headers: Iterable[tuple[str, bytes | None]] | None = None) -> Unwrapped:
    """Take the envelope off a record value; raises `InvalidEvent` for a broken envelope.

    A value without any envelope comes back unchanged. `headers` are the record's headers (for the
    structured-mode content type and the binary-mode `ce_*` attributes).
    """
    found = _headers(headers)
    body = strip_framing(raw)
    echoed = {key: found[key] for key in ECHOED if found.get(key)}
    structured = found.get("content-type", "").lower().startswith(CLOUDEVENTS_JSON)
    if not structured and not (body.lstrip()[:1] == b"{" and b'"specversion"' in body):
        return Unwrapped(body, echoed)
    try:
        event = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        if structured:
            raise InvalidEvent(f"a structured CloudEvent must be a JSON object: {exc}") from exc
        return Unwrapped(body, echoed)  # not JSON at all: the request decoder says why
    if not isinstance(event, dict) or "specversion" not in event:
        if structured:
            raise InvalidEvent("a structured CloudEvent must be a JSON object with specversion")
        return Unwrapped(body, echoed)
    if "data" not in event and "data_base64" not in event:
        if structured:
            raise InvalidEvent("the CloudEvent has no data: the edit request goes in data")
        return Unwrapped(body, echoed)  # a request with a field named specversion
    echoed.update({key: str(event[name])[:1024] for key, name in ECHOED.items() if event.get(name)})
    return Unwrapped(_data(event), echoed)


def strip_framing(raw: bytes) -> bytes:
    """Strip a Schema Registry frame, then a UTF-8 BOM, when present."""
    if raw[:1] == SCHEMA_REGISTRY_MAGIC and len(raw) > SCHEMA_REGISTRY_HEADER_BYTES:
        raw = raw[SCHEMA_REGISTRY_HEADER_BYTES:]
    return raw.removeprefix(UTF8_BOM)


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
        return strip_framing(data.encode("utf-8"))  # the request as a JSON string
    return json.dumps(data).encode("utf-8")


def _headers(headers: Iterable[tuple[str, bytes | None]] | None) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in headers or ():
        if value is not None:
            found[key.lower()] = bytes(value).decode("utf-8", "replace")
    return found
