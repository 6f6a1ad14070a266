"""The edge where wire bytes become models and back. Nothing else parses or renders JSON events.

No record can get past this edge as anything but a model or an `InvalidEvent`: every failure while
reading producer bytes (a `RecursionError` or `MemoryError` included) refuses that record, and
`salvage_request_id` never raises.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import re
import typing
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from consumer.kafka.envelope import (
    Unwrapped,
    identify_foreign,
    json_depth_exceeds,
    load_json,
    strip_framing,
    too_deep_message,
    unwrap,
)
from schemas.errors import InvalidEvent
from schemas.requests import REQUEST_ID_PATTERN, EditRequest

_REQUEST_ID_RE = re.compile(REQUEST_ID_PATTERN)
E = TypeVar("E", bound=BaseModel)


# How alike (difflib ratio, after case, '_' and '-' are ignored) an unknown field name and a known one
# must be for the unknown one to be taken as a misspelling: `num_inference_step` (0.97),
# `numInferenceSteps` (1.0), `Seed` (1.0), `formt` (0.91) and `images` (0.91) are; `priority`,
# `output_dpi` (0.8) and `negative_prompt` (0.6) are not. A new field must not be that close to an
# existing one (README, "Evolving the contract").
TYPO_SIMILARITY = 0.85

# What the request topic takes, named in refusals of records that are something else.
REQUEST_SCHEMA = "edit-request.v1"
EXPECTED = (
    f"the request topic takes edit requests (JSON Schema {REQUEST_SCHEMA}, "
    f"published as schemas/jsonschema/{REQUEST_SCHEMA}.schema.json)"
)
# A record key longer than any request id can be is not decoded to look for one.
_MAX_KEY_BYTES = 512


def decode_request(raw: bytes | None, *, max_bytes: int, strict: bool = False) -> EditRequest:
    """Parse one record value; every failure is an `InvalidEvent` whose message names the field.

    Schema evolution (README, "Evolving the contract"): a field this worker does not know, at any
    depth, is ignored and its path kept in `EditRequest.ignored_fields` (the result lists it in
    `warnings`), so producers can add fields before every worker knows them. A field whose name is
    close to a known one (`TYPO_SIMILARITY`) is rejected instead, naming both, so a typo never falls
    back to a default silently. `strict` rejects every unknown field.
    """
    if raw is None:
        raise InvalidEvent("record has no value (a tombstone?); expected a JSON edit request")
    if len(raw) > max_bytes:
        raise InvalidEvent(f"record is {len(raw)} bytes; requests are limited to {max_bytes} bytes")
    with _refusing():
        try:
            request, ignored = _decode_tolerant(EditRequest, raw, strict=strict)
        except InvalidEvent as exc:
            what = _foreign(raw)
            if what is None:
                raise
            raise InvalidEvent(f"not an edit request: {what}; {EXPECTED}") from exc
        request.note_ignored_fields(ignored)
        return request


def decode_record(
    raw: bytes | None,
    headers: Sequence[tuple[str, bytes | None]] | None,
    *,
    max_bytes: int,
    strict: bool = False,
) -> EditRequest:
    """A request record as platforms send it: its envelope taken off (`consumer.kafka.envelope.unwrap`:
    Schema Registry framing, BOM, Kafka Connect, CloudEvents structured or Dapr), then `decode_request`.

    The CloudEvents `id`, `source` and `type` are added to the request's `metadata` as `ce_id`,
    `ce_source` and `ce_type` (echoed in the result), unless the request sets those keys itself or its
    metadata is full. `max_bytes` bounds the whole record value. Raises `InvalidEvent`, and nothing
    else, whatever the bytes.
    """
    if raw is None:
        raise InvalidEvent("record has no value (a tombstone?); expected a JSON edit request")
    if len(raw) > max_bytes:
        raise InvalidEvent(f"record is {len(raw)} bytes; requests are limited to {max_bytes} bytes")
    with _refusing():
        return _decode_unwrapped(unwrap(raw, headers), max_bytes=max_bytes, strict=strict)


def _decode_unwrapped(unwrapped: Unwrapped, *, max_bytes: int, strict: bool) -> EditRequest:
    try:
        request = decode_request(unwrapped.body, max_bytes=max_bytes, strict=strict)
    except InvalidEvent as exc:
        if unwrapped.schema_id is not None and not _is_json(unwrapped.body):
            raise InvalidEvent(
                f"not an edit request: a Confluent Schema Registry frame (schema id {unwrapped.schema_id}) "
                "whose body is not JSON: Avro or Protobuf? Produce JSON (the JSON Schema serializer or "
                f"plain JSON); {EXPECTED}"
            ) from exc
        raise
    echoed = {k: v for k, v in unwrapped.cloudevent.items() if k not in request.metadata}
    if not echoed or len(request.metadata) + len(echoed) > _METADATA_ENTRIES:
        return request
    ignored = request.ignored_fields
    request = request.model_copy(update={"metadata": {**request.metadata, **echoed}})
    request.note_ignored_fields(ignored)
    return request


_METADATA_ENTRIES = 32  # EditRequest.metadata's max_length


def decode_event(model: type[E], raw: bytes, *, reject_misspellings: bool = True) -> E:
    """A wire event we consume (a cancel command; a result for `submit --wait`): fields added by a newer
    publisher are ignored.

    `reject_misspellings`: refuse an unknown field close to a known one, as for requests. Right for
    what people and their tools write (cancel commands); off for results and progress, which the
    worker writes from its own model, so an unknown field there is always a newer field (`outputs`
    beside `output`) and never a typo.

    Raises `InvalidEvent` naming the field, and nothing else, whatever the bytes.
    """
    with _refusing():
        event, _ = _decode_tolerant(model, raw, strict=False, reject_typos=reject_misspellings)
        return event


@contextlib.contextmanager
def _refusing() -> Iterator[None]:
    """Turn any failure while reading producer bytes into an `InvalidEvent` refusing the record.

    The parsers' own errors are mapped where they are raised, with a message naming the field; this is
    the backstop that keeps anything unforeseen (a `RecursionError`, a `MemoryError`, a library bug)
    from escaping as something the caller would take for a fault of the worker.
    """
    try:
        yield
    except InvalidEvent:
        raise
    except Exception as exc:
        raise InvalidEvent(f"record could not be decoded: {type(exc).__name__}: {str(exc)[:200]}") from exc


def _decode_tolerant(
    model: type[E], raw: bytes, *, strict: bool, reject_typos: bool = True
) -> tuple[E, tuple[str, ...]]:
    """(the event, paths of the unknown fields ignored); see `decode_request`. `reject_typos`: refuse an
    unknown field close to a known one."""
    if json_depth_exceeds(raw):
        raise InvalidEvent(too_deep_message())
    try:
        return model.model_validate_json(raw), ()
    except ValidationError as exc:
        first = exc
    errors = first.errors(include_url=False)
    unknown = [tuple(e["loc"]) for e in errors if e["type"] == "extra_forbidden"]
    others = [e for e in errors if e["type"] != "extra_forbidden"]
    typos = [
        f"{_format_path(loc)}: unknown field, did you mean {guess!r}? (a misspelling is never ignored)"
        for loc in (unknown if reject_typos else [])
        if (guess := _close_known_field(model, loc)) is not None
    ]
    if strict and unknown:
        raise InvalidEvent(_describe(errors)) from first
    if typos or others:
        raise InvalidEvent("; ".join([*typos, *([_describe(others)] if others else [])])) from first
    body = load_json(raw)
    for loc in unknown:
        _drop(body, loc)
    try:
        event = model.model_validate_json(json.dumps(body))
    except ValidationError as exc:  # not expected: only unknown keys were removed
        raise InvalidEvent(describe_validation_error(exc)) from exc
    return event, tuple(_format_path(loc) for loc in unknown)


def _close_known_field(model: type[BaseModel], loc: tuple[int | str, ...]) -> str | None:
    """The known field at the same level as the unknown one at `loc` that it is a misspelling of."""
    known = _known_fields(model, loc[:-1])
    by_norm = {_normalized(field): field for field in known}
    match = difflib.get_close_matches(_normalized(str(loc[-1])), list(by_norm), n=1, cutoff=TYPO_SIMILARITY)
    return by_norm[match[0]] if match else None


def _normalized(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def _known_fields(root: type[BaseModel], parent: tuple[int | str, ...]) -> list[str]:
    """Field names of the model found at `parent` (list indexes skipped) below `root`."""
    model = root
    for part in parent:
        if isinstance(part, int):
            continue
        nested = _model_in(model.model_fields[str(part)].annotation)
        if nested is None:
            return []
        model = nested
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as `OutputSpec | None` or `list[X] | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _drop(body: Any, loc: tuple[int | str, ...]) -> None:
    node = body
    for part in loc[:-1]:
        node = node[part]
    node.pop(loc[-1], None)


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, each starting with the field path, e.g. `recolor[0].color: ...`."""
    return _describe(exc.errors(include_url=False))


def _describe(errors: Sequence[ErrorDetails]) -> str:
    problems = []
    for error in errors:
        path = _format_path(error["loc"])
        if error["type"] == "json_invalid":
            problems.append(f"record is not valid JSON: {error['msg']}")
        elif error["type"] == "extra_forbidden":
            problems.append(f"{path}: unknown field (the worker rejects unknown fields)")
        elif error["type"] == "model_type" and not path:
            problems.append("record must be a JSON object")
        elif error["type"] in _NUMBER_CHECKS and (what := _non_finite(error.get("input"))):
            problems.append(f"{path or 'request'}: {what}; a finite number is required")
        else:
            problems.append(f"{path or 'request'}: {error['msg']}")
    return "; ".join(problems)


# Checks a NaN or an infinity fails (JSON has neither, but `NaN`, `Infinity` and `1e999` are read
# as floats): their own messages would call NaN "greater than 30".
_NUMBER_CHECKS = frozenset(
    {"finite_number", "less_than", "less_than_equal", "greater_than", "greater_than_equal", "multiple_of"}
)


def _non_finite(value: object) -> str | None:
    if not isinstance(value, float) or math.isfinite(value):
        return None
    if math.isnan(value):
        return "not a number (NaN)"
    return "infinite (Infinity, or a number too large for a double)"


def _foreign(raw: bytes) -> str | None:
    """What a refused record is, when it is something platforms commonly send instead of a request."""
    try:
        return identify_foreign(load_json(raw))
    except InvalidEvent:
        return None


def _is_json(body: bytes) -> bool:
    """Whether `body` is JSON text (nested too deep counts: the decoder refused it for that)."""
    if json_depth_exceeds(body):
        return True
    try:
        json.loads(body)
    except Exception:
        return False
    return True


def _format_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def salvage_request_id(
    raw: bytes | None, key: bytes | None, headers: Sequence[tuple[str, bytes | None]] | None = None
) -> str | None:
    """Best effort: the request id of a record that failed validation, so its failure can be keyed.

    Tried in order: the JSON `request_id` (inside its envelope, if any), then the record key. Only ids
    that match the contract's pattern are used, so a hostile value never reaches a topic key or an S3
    key. Never raises: it runs before the record is admitted, outside any handler, so whatever the
    record holds gives an id or None.
    """
    candidates = [_request_id_in(raw, headers)] if raw else []
    if key and len(key) <= _MAX_KEY_BYTES:
        with contextlib.suppress(UnicodeDecodeError):
            candidates.append(key.decode("utf-8"))
    for candidate in candidates:
        if isinstance(candidate, str) and _REQUEST_ID_RE.fullmatch(candidate):
            return candidate
    return None


def _request_id_in(raw: bytes, headers: Sequence[tuple[str, bytes | None]] | None) -> object:
    """The `request_id` member of the record's JSON, if it has one; None whatever goes wrong."""
    try:
        try:
            inner = unwrap(raw, headers).body
        except InvalidEvent:
            inner = strip_framing(raw)
        body = load_json(inner)
    except Exception:  # best effort: a record that cannot be read has no id to give
        return None
    return body.get("request_id") if isinstance(body, dict) else None


def encode_event(event: BaseModel) -> bytes:
    return event.model_dump_json().encode("utf-8")
