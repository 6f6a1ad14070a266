"""The result event (schema_version 1): one per request, keyed by `request_id` on the result topic."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import Field

from schemas._base import WireModel
from schemas.errors import ErrorCode, KleinEditError
from schemas.provenance import AdapterInfo as AdapterInfo  # re-exported: defined beside provenance
from schemas.provenance import Provenance
from schemas.requests import WHITE, OutputFormat

DEFAULT_USD_PER_MEGAPIXEL = 0.002


class EditStatus(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


class OutputInfo(WireModel):
    uri: str
    width: int
    height: int
    format: OutputFormat
    bytes: int = Field(description="Size of the stored object in bytes.")
    sha256: str = Field(description="Hex SHA-256 of the stored object.")
    alpha: bool = Field(
        default=False, description="The object has an alpha channel (the base image's, see params.alpha)."
    )
    color_profile: str | None = Field(
        default=None,
        description="The ICC profile embedded in the object: 'sRGB' (null only for objects stored by "
        "workers that embedded none).",
    )


USD_DECIMALS = 8
"""`Cost.usd` is rounded to this many decimal places: 0.00014336, never 0.00014335999999999998."""


class Cost(WireModel):
    """Billing: output megapixels x the rate. Failed and canceled edits cost 0."""

    usd: float = Field(description=f"Rounded to {USD_DECIMALS} decimal places.")
    output_megapixels: float
    input_megapixels: float
    usd_per_output_megapixel: float
    adapters: int = Field(
        default=0, description="LoRA adapters used (params.loras); not priced here, reported for billing."
    )
    adapter_bytes: int = Field(default=0, description="Total size of those adapters' files in bytes.")

    @classmethod
    def for_output(
        cls,
        *,
        width: int,
        height: int,
        input_megapixels: float,
        usd_per_megapixel: float,
        adapters: int = 0,
        adapter_bytes: int = 0,
    ) -> Cost:
        output_megapixels = width * height / 1e6
        return cls(
            usd=round(output_megapixels * usd_per_megapixel, USD_DECIMALS),
            output_megapixels=output_megapixels,
            input_megapixels=input_megapixels,
            usd_per_output_megapixel=usd_per_megapixel,
            adapters=adapters,
            adapter_bytes=adapter_bytes,
        )

    @classmethod
    def free(cls, *, input_megapixels: float, usd_per_megapixel: float) -> Cost:
        return cls(
            usd=0.0,
            output_megapixels=0.0,
            input_megapixels=input_megapixels,
            usd_per_output_megapixel=usd_per_megapixel,
        )


class Timing(WireModel):
    """Milliseconds per stage; `queued` runs from the record's timestamp to pickup."""

    queued: float = 0.0
    fetch: float = 0.0
    inference: float = 0.0
    upload: float = 0.0
    total: float = 0.0
    adapter_load: float = Field(
        default=0.0,
        description="Reading and checking the request's LoRA adapters (a host-cache miss, inside fetch) "
        "plus loading them into the transformer (GPU time); 0 when every adapter was already resident.",
    )


class ErrorInfo(WireModel):
    code: ErrorCode
    message: str
    retryable: bool

    @classmethod
    def from_error(cls, error: KleinEditError) -> ErrorInfo:
        return cls(code=error.code, message=error.message, retryable=error.retryable)


class EditParams(WireModel):
    """The parameters actually used, after defaults, seed choice and size resolution."""

    prompt: str
    num_inference_steps: int
    guidance_scale: float
    seed: int
    width: int = Field(description="Output width in pixels (a multiple of 16), as generated.")
    height: int = Field(description="Output height in pixels (a multiple of 16), as generated.")
    references: int = Field(description="Number of reference images besides the base image.")
    background: str = Field(
        default=WHITE, description="sRGB #RRGGBB that transparent areas of the inputs were composited onto."
    )
    alpha: Literal["flatten", "keep"] = Field(
        default="flatten",
        description="What was done with the base image's alpha: 'keep' when output.alpha asked for it "
        "(or 'auto' chose it); output.alpha says whether the object has one.",
    )
    guidance_applied: bool = Field(
        default=True,
        description="Whether classifier-free guidance ran: guidance_scale <= 1 turns it off (one transformer "
        "pass per step instead of two).",
    )
    loras: list[AdapterInfo] = Field(
        default_factory=list, description="The LoRA adapters applied, in request order (empty: none)."
    )


class EditCompleted(WireModel):
    """Published once per request when it succeeded, failed or was canceled."""

    schema_version: Literal[1] = 1
    request_id: str
    status: EditStatus
    output: OutputInfo | None = None
    cost: Cost
    timing_ms: Timing
    error: ErrorInfo | None = None
    params: EditParams | None = Field(default=None, description="Null when the request never got that far.")
    model: str
    attempt: int = Field(ge=1, description="1 for the first try; grows with each retry or redelivery.")
    worker: str = Field(description="Identity of the worker process that produced this event.")
    completed_at: datetime
    metadata: dict[str, str] = Field(default_factory=dict)
    gpu_ms: float = Field(
        default=0.0, description="GPU time spent on this request (also for canceled edits)."
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="What the worker accepted but did not use, e.g. 'unknown field ignored: priority' "
        "(a producer newer than this worker). Added in edit-completed v1 without a version bump.",
    )
    provenance: Provenance | None = Field(
        default=None,
        description="Where the output came from (model, revision, settings, versions, input hashes, seed); "
        "set when succeeded. Added in edit-completed v1 without a version bump.",
    )
    transformer_passes: int | None = Field(
        default=None,
        ge=0,
        description="Transformer passes actually run for this edit: steps x 2 with guidance, fewer when the "
        "operator's step cache or guidance interval skipped some; set when succeeded. Added in "
        "edit-completed v1 without a version bump.",
    )
