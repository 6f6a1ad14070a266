"""The edge where wire bytes become models and back. Nothing else parses or renders JSON events."""

from __future__ import annotations

import contextlib
import json
import re

from pydantic import BaseModel, ValidationError

from schemas.errors import InvalidEvent
from schemas.requests import REQUEST_ID_PATTERN, EditRequest

_REQUEST_ID_RE = re.compile(REQUEST_ID_PATTERN)


def decode_request(raw: bytes | None, *, max_bytes: int) -> EditRequest:
    """Parse one record value; every failure is an `InvalidEvent` whose message names the field."""
    if raw is None:
        raise InvalidEvent("record has no value (a tombstone?); expected a JSON edit request")
    if len(raw) > max_bytes:
        raise InvalidEvent(f"record is {len(raw)} bytes; requests are limited to {max_bytes} bytes")
    try:
        return EditRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidEvent(describe_validation_error(exc)) from exc


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, each starting with the field path, e.g. `recolor[0].color: ...`."""
    problems = []
    for error in exc.errors(include_url=False):
        path = _format_path(error["loc"])
        if error["type"] == "json_invalid":
            problems.append(f"record is not valid JSON: {error['msg']}")
        elif error["type"] == "model_type" and not path:
            problems.append("record must be a JSON object")
        else:
            problems.append(f"{path or 'request'}: {error['msg']}")
    return "; ".join(problems)


def _format_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def salvage_request_id(raw: bytes | None, key: bytes | None) -> str | None:
    """Best effort: the request id of a record that failed validation, so its failure can be keyed.

    Tried in order: the JSON `request_id`, then the record key. Only ids that match the contract's
    pattern are used, so a hostile value never reaches a topic key or an S3 key.
    """
    candidates: list[object] = []
    if raw:
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            body = None
        if isinstance(body, dict):
            candidates.append(body.get("request_id"))
    if key:
        with contextlib.suppress(UnicodeDecodeError):
            candidates.append(key.decode("utf-8"))
    for candidate in candidates:
        if isinstance(candidate, str) and _REQUEST_ID_RE.fullmatch(candidate):
            return candidate
    return None


def encode_event(event: BaseModel) -> bytes:
    return event.model_dump_json().encode("utf-8")
