"""The published JSON Schemas: valid Draft 2020-12, in step with the models, and committed as files."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from schemas.errors import InvalidEvent
from schemas.export import PUBLISHED_DIR, WIRE_EVENTS, json_schemas, write_published
from schemas.requests import EditRequest
from schemas.results import Cost, EditCompleted, EditStatus, ErrorInfo, Timing

REQUEST = "edit-request.v1"
COMPLETED = "edit-completed.v1"

VALID_REQUEST: dict[str, Any] = {
    "schema_version": 1,
    "request_id": "order-42:item.7",
    "image": "s3://inputs/shoe.png",
    "references": ["refs/logo.png"],
    "prompt": "Make the background a sunny beach.",
    "recolor": [{"target": "the sneakers", "color": "#1E90FF"}, {"target": "the laces", "color": "#fff"}],
    "num_inference_steps": 28,
    "guidance_scale": 3.5,
    "seed": 1234,
    "width": 1024,
    "height": 768,
    "output": {"uri": "s3://outputs/edits/order-42.webp", "format": "webp"},
    "metadata": {"sku": "SN-1"},
    "deadline": "2026-01-01T12:00:00Z",
    "progress": True,
}

# Field-level violations: the worker rejects them, and so does the published schema.
INVALID_REQUESTS: dict[str, dict[str, Any]] = {
    "bad colour": {**VALID_REQUEST, "recolor": [{"target": "the sneakers", "color": "blue"}]},
    "colour without #": {**VALID_REQUEST, "recolor": [{"target": "the sneakers", "color": "1E90FF"}]},
    "five-digit colour": {**VALID_REQUEST, "recolor": [{"target": "the sneakers", "color": "#1E90F"}]},
    "extra field": {**VALID_REQUEST, "negativePrompt": "blurry"},
    "extra nested field": {**VALID_REQUEST, "output": {"format": "png", "dpi": 300}},
    "extra recolor field": {**VALID_REQUEST, "recolor": [{"target": "x", "color": "#fff", "alpha": 1}]},
    "missing image": {k: v for k, v in VALID_REQUEST.items() if k != "image"},
    "missing request_id": {k: v for k, v in VALID_REQUEST.items() if k != "request_id"},
    "bad request_id": {**VALID_REQUEST, "request_id": "a/b"},
    "too many steps": {**VALID_REQUEST, "num_inference_steps": 51},
    "too few steps": {**VALID_REQUEST, "num_inference_steps": 24},
    "guidance too high": {**VALID_REQUEST, "guidance_scale": 30.5},
    "negative seed": {**VALID_REQUEST, "seed": -1},
    "width not a multiple of 16": {**VALID_REQUEST, "width": 1000},
    "gif output": {**VALID_REQUEST, "output": {"format": "gif"}},
    "schema_version 2": {**VALID_REQUEST, "schema_version": 2},
    "prompt too long": {**VALID_REQUEST, "prompt": "p" * 2001},
    "empty recolor": {**VALID_REQUEST, "recolor": []},
    "too many references": {**VALID_REQUEST, "references": [f"r{i}" for i in range(17)]},
    "non-string metadata": {**VALID_REQUEST, "metadata": {"sku": 1}},
}


@pytest.fixture(scope="module")
def schemas() -> dict[str, dict[str, Any]]:
    return json_schemas()


def validator(schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator(schema)


def test_both_events_are_exported(schemas: dict[str, dict[str, Any]]) -> None:
    assert {REQUEST, COMPLETED} <= set(schemas)
    assert set(schemas) == set(WIRE_EVENTS)
    assert WIRE_EVENTS[REQUEST] is EditRequest
    assert WIRE_EVENTS[COMPLETED] is EditCompleted


@pytest.mark.parametrize("name", list(WIRE_EVENTS))
def test_each_schema_is_valid_draft_2020_12(schemas: dict[str, dict[str, Any]], name: str) -> None:
    schema = schemas[name]
    assert name.endswith(".v1")
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://klein-edit.dev/schemas/{name}.json"
    Draft202012Validator.check_schema(schema)
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False


def test_json_schemas_returns_fresh_copies() -> None:
    first = json_schemas()
    first[REQUEST]["title"] = "changed"
    assert json_schemas()[REQUEST]["title"] == "EditRequest"


def test_valid_request_validates_against_the_published_schema(schemas: dict[str, dict[str, Any]]) -> None:
    validator(schemas[REQUEST]).validate(VALID_REQUEST)
    EditRequest.model_validate(VALID_REQUEST)  # and the worker agrees


@pytest.mark.parametrize(
    "body",
    [
        {"request_id": "r", "image": "a.png", "prompt": "p"},
        {"request_id": "r", "image": "a.png", "recolor": [{"target": "t", "color": "#abc"}]},
    ],
    ids=["prompt only", "recolor only"],
)
def test_minimal_requests_validate(schemas: dict[str, dict[str, Any]], body: dict[str, Any]) -> None:
    validator(schemas[REQUEST]).validate(body)
    EditRequest.model_validate(body)


@pytest.mark.parametrize("case", list(INVALID_REQUESTS))
def test_invalid_requests_fail_the_published_schema(schemas: dict[str, dict[str, Any]], case: str) -> None:
    body = INVALID_REQUESTS[case]
    assert list(validator(schemas[REQUEST]).iter_errors(body)), f"{case}: the schema accepted it"
    with pytest.raises(ValidationError):
        EditRequest.model_validate(body)


@pytest.mark.parametrize(
    "body",
    [
        {"request_id": "r", "image": "a.png"},
        {"request_id": "r", "image": "a.png", "prompt": "p", "width": 512},
    ],
    ids=["neither prompt nor recolor", "width without height"],
)
def test_cross_field_rules_are_in_the_published_schema(
    schemas: dict[str, dict[str, Any]], body: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError):
        EditRequest.model_validate(body)
    assert list(validator(schemas[REQUEST]).iter_errors(body)), "the published schema accepts it"


@pytest.mark.parametrize("status", list(EditStatus))
def test_result_events_validate_against_the_published_schema(
    schemas: dict[str, dict[str, Any]], status: EditStatus
) -> None:
    event = EditCompleted(
        request_id="req-1",
        status=status,
        cost=Cost.free(input_megapixels=0.0, usd_per_megapixel=0.002),
        timing_ms=Timing(),
        error=None if status is EditStatus.SUCCEEDED else ErrorInfo.from_error(InvalidEvent("x")),
        model="tiny-random",
        attempt=1,
        worker="w",
        completed_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    body = json.loads(event.model_dump_json())
    validator(schemas[COMPLETED]).validate(body)
    assert list(validator(schemas[COMPLETED]).iter_errors({**body, "status": "exploded"}))
    assert list(validator(schemas[COMPLETED]).iter_errors({**body, "extra": 1}))


# --- the committed files ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(WIRE_EVENTS))
def test_committed_schema_files_match_the_models(schemas: dict[str, dict[str, Any]], name: str) -> None:
    path = PUBLISHED_DIR / f"{name}.schema.json"
    assert path.is_file(), f"{path} is missing: run `python -m schemas.export` and commit the result"
    committed = json.loads(path.read_text())
    assert committed == schemas[name], (
        f"{path.name} is out of date with the models: run `python -m schemas.export` and commit the result"
    )


def test_no_stray_files_in_the_published_directory() -> None:
    published = {path.name for path in PUBLISHED_DIR.glob("*.json")}
    assert published == {f"{name}.schema.json" for name in WIRE_EVENTS}, (
        "schemas/jsonschema/ holds files no wire event produces: run `python -m schemas.export` "
        "and remove the stale ones"
    )


def test_committed_files_are_byte_identical_to_the_export(tmp_path: Path) -> None:
    written = write_published(tmp_path)
    assert sorted(p.name for p in written) == sorted(f"{name}.schema.json" for name in WIRE_EVENTS)
    for path in written:
        assert (PUBLISHED_DIR / path.name).read_text() == path.read_text(), (
            f"{path.name} differs from the export: run `python -m schemas.export`"
        )
