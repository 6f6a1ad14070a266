"""The result event: cost computation, error info and a lossless JSON round trip."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from schemas.errors import ErrorCode, InvalidEvent, KleinEditError
from schemas.requests import OutputFormat
from schemas.results import (
    DEFAULT_USD_PER_MEGAPIXEL,
    USD_DECIMALS,
    Cost,
    EditCompleted,
    EditParams,
    EditStatus,
    ErrorInfo,
    OutputInfo,
    Timing,
)

COMPLETED_AT = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def succeeded() -> EditCompleted:
    return EditCompleted(
        request_id="req-1",
        status=EditStatus.SUCCEEDED,
        output=OutputInfo(
            uri="s3://out/edits/req-1.png",
            width=1024,
            height=768,
            format=OutputFormat.PNG,
            bytes=123_456,
            sha256="ab" * 32,
        ),
        cost=Cost.for_output(width=1024, height=768, input_megapixels=0.75, usd_per_megapixel=0.002),
        timing_ms=Timing(queued=1.5, fetch=20.25, inference=900.0, upload=30.0, total=951.75),
        params=EditParams(
            prompt="make it sunny",
            num_inference_steps=50,
            guidance_scale=4.0,
            seed=42,
            width=1024,
            height=768,
            references=1,
        ),
        model="black-forest-labs/FLUX.2-klein-base-9B",
        attempt=1,
        worker="host-1",
        completed_at=COMPLETED_AT,
        metadata={"sku": "123"},
        gpu_ms=899.5,
    )


def failed() -> EditCompleted:
    return EditCompleted(
        request_id="req-2",
        status=EditStatus.FAILED,
        cost=Cost.free(input_megapixels=0.0, usd_per_megapixel=DEFAULT_USD_PER_MEGAPIXEL),
        timing_ms=Timing(),
        error=ErrorInfo.from_error(InvalidEvent("recolor[0].color: String should match pattern")),
        model="tiny-random",
        attempt=3,
        worker="host-2",
        completed_at=COMPLETED_AT,
    )


# --- cost ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "megapixels"),
    [
        (1024, 1024, 1.048576),
        (1000, 1000, 1.0),
        (512, 768, 0.393216),
        (64, 64, 0.004096),
        (4096, 4096, 16.777216),
    ],
)
def test_cost_for_output_is_output_megapixels_times_the_rate(
    width: int, height: int, megapixels: float
) -> None:
    cost = Cost.for_output(width=width, height=height, input_megapixels=0.3, usd_per_megapixel=0.002)
    assert cost.output_megapixels == megapixels
    assert cost.output_megapixels == width * height / 1e6
    assert cost.usd == round(width * height / 1e6 * 0.002, USD_DECIMALS)
    assert cost.usd == pytest.approx(megapixels * 0.002, abs=0.5 * 10**-USD_DECIMALS)
    assert cost.input_megapixels == 0.3
    assert cost.usd_per_output_megapixel == 0.002


def test_cost_usd_has_a_fixed_number_of_decimals() -> None:
    """A billing system never sees float noise: 0.07168 MP x 0.002 is 0.00014336 exactly as written."""
    cost = Cost.for_output(width=256, height=280, input_megapixels=0.1, usd_per_megapixel=0.002)
    assert 0.07168 * 0.002 != 0.00014336  # the float product has noise in the last digits
    assert cost.usd == 0.00014336
    assert cost.model_dump_json().count('"usd":0.00014336,') == 1


def test_cost_for_output_with_a_custom_rate() -> None:
    cost = Cost.for_output(width=1000, height=2000, input_megapixels=1.0, usd_per_megapixel=0.05)
    assert cost.output_megapixels == 2.0
    assert cost.usd == pytest.approx(0.1, rel=1e-12)
    assert cost.usd_per_output_megapixel == 0.05


def test_cost_for_output_at_a_zero_rate_is_free() -> None:
    cost = Cost.for_output(width=1024, height=1024, input_megapixels=1.0, usd_per_megapixel=0.0)
    assert cost.usd == 0.0
    assert cost.output_megapixels == 1.048576


def test_default_rate() -> None:
    assert DEFAULT_USD_PER_MEGAPIXEL == 0.002


def test_cost_free_bills_nothing_but_keeps_inputs_and_rate() -> None:
    cost = Cost.free(input_megapixels=0.75, usd_per_megapixel=0.004)
    assert cost.usd == 0.0
    assert cost.output_megapixels == 0.0
    assert cost.input_megapixels == 0.75
    assert cost.usd_per_output_megapixel == 0.004


# --- parts -----------------------------------------------------------------------------------------


def test_timing_defaults_to_zero() -> None:
    assert Timing().model_dump() == {
        "queued": 0.0,
        "fetch": 0.0,
        "inference": 0.0,
        "upload": 0.0,
        "total": 0.0,
        "qa": 0.0,
        "adapter_load": 0.0,
    }


def test_error_info_from_error_copies_code_message_and_retryable() -> None:
    info = ErrorInfo.from_error(InvalidEvent("image: Field required"))
    assert info == ErrorInfo(code=ErrorCode.INVALID_EVENT, message="image: Field required", retryable=False)
    retryable = ErrorInfo.from_error(KleinEditError("boom", retryable=True))
    assert retryable.code is ErrorCode.INTERNAL
    assert retryable.retryable is True


def test_error_codes_are_stable_strings() -> None:
    assert {code.value for code in ErrorCode} == {
        "INVALID_EVENT",
        "INPUT_NOT_FOUND",
        "INPUT_FORBIDDEN",
        "INPUT_TOO_LARGE",
        "INVALID_IMAGE",
        "INVALID_ADAPTER",
        "GPU_OUT_OF_MEMORY",
        "STORAGE_UNAVAILABLE",
        "DEADLINE_EXCEEDED",
        "CANCELED",
        "INTERNAL",
        "INPUT_MODERATED",
        "OUTPUT_MODERATED",
        "COLOR_OUT_OF_TOLERANCE",
    }
    assert {status.value for status in EditStatus} == {"succeeded", "failed", "canceled"}


def test_result_defaults() -> None:
    event = failed()
    assert event.schema_version == 1
    assert event.output is None
    assert event.params is None
    assert event.metadata == {}
    assert event.gpu_ms == 0.0


def test_attempt_starts_at_1() -> None:
    with pytest.raises(ValidationError) as info:
        EditCompleted.model_validate({**failed().model_dump(), "attempt": 0})
    assert info.value.errors()[0]["loc"] == ("attempt",)


def test_result_rejects_unknown_fields_and_is_frozen() -> None:
    with pytest.raises(ValidationError):
        EditCompleted.model_validate({**failed().model_dump(), "extra": 1})
    event = succeeded()
    with pytest.raises(ValidationError):
        event.status = EditStatus.FAILED  # type: ignore[misc]
    with pytest.raises(ValidationError):
        event.cost.usd = 0.0  # type: ignore[misc]


# --- JSON round trip -------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [succeeded, failed], ids=["succeeded", "failed"])
def test_result_round_trips_through_json(make: Callable[[], EditCompleted]) -> None:
    event = make()
    raw = event.model_dump_json()
    again = EditCompleted.model_validate_json(raw)
    assert again == event
    assert again.model_dump_json() == raw


def test_result_json_uses_wire_values() -> None:
    body = json.loads(succeeded().model_dump_json())
    assert body["status"] == "succeeded"
    assert body["output"]["format"] == "png"
    assert body["completed_at"] == "2026-01-02T03:04:05.678901Z"
    assert body["cost"]["output_megapixels"] == 0.786432
    assert body["schema_version"] == 1
    error = json.loads(failed().model_dump_json())["error"]
    assert error == {
        "code": "INVALID_EVENT",
        "message": "recolor[0].color: String should match pattern",
        "retryable": False,
    }
