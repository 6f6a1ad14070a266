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
    url: str | None = Field(
        default=None,
        description="A presigned GET link to the object (when the operator sets "
        "KLEIN_EDIT_S3__PRESIGN_TTL_S); "
        "a redelivered request gets a fresh one.",
    )
    url_expires_at: datetime | None = Field(default=None, description="When `url` stops working (UTC).")
    seed: int | None = Field(
        default=None, description="The seed this image was generated with (params.seed + its index)."
    )


USD_DECIMALS = 8
"""`Cost.usd` is rounded to this many decimal places: 0.00014336, never 0.00014335999999999998."""


class Cost(WireModel):
    """Billing: output megapixels x the rate. Failed and canceled edits cost 0."""

    usd: float = Field(description=f"Rounded to {USD_DECIMALS} decimal places.")
    output_megapixels: float = Field(description="width x height / 1e6 of each image billed, summed.")
    input_megapixels: float
    usd_per_output_megapixel: float
    adapters: int = Field(
        default=0, description="LoRA adapters used (params.loras); not priced here, reported for billing."
    )
    adapter_bytes: int = Field(default=0, description="Total size of those adapters' files in bytes.")
    images: int = Field(
        default=1,
        ge=0,
        description="Images billed: num_images, or color_qa.candidates (every one generated is billed).",
    )

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
        images: int = 1,
    ) -> Cost:
        """Billing for `images` generated images of `width` x `height` pixels each."""
        output_megapixels = width * height * images / 1e6
        return cls(
            usd=round(output_megapixels * usd_per_megapixel, USD_DECIMALS),
            output_megapixels=output_megapixels,
            input_megapixels=input_megapixels,
            usd_per_output_megapixel=usd_per_megapixel,
            adapters=adapters,
            adapter_bytes=adapter_bytes,
            images=images,
        )

    @classmethod
    def free(cls, *, input_megapixels: float, usd_per_megapixel: float) -> Cost:
        return cls(
            usd=0.0,
            output_megapixels=0.0,
            input_megapixels=input_megapixels,
            usd_per_output_megapixel=usd_per_megapixel,
            images=0,
        )


class Timing(WireModel):
    """Milliseconds per stage; `queued` runs from the record's timestamp to pickup."""

    queued: float = 0.0
    fetch: float = 0.0
    inference: float = 0.0
    upload: float = 0.0
    total: float = 0.0
    qa: float = Field(default=0.0, description="The colour check (measure and correct), off the GPU thread.")
    adapter_load: float = Field(
        default=0.0,
        description="Reading and checking the request's LoRA adapters (a host-cache miss, inside fetch) "
        "plus loading them into the transformer (GPU time); 0 when every adapter was already resident.",
    )


class TargetColor(WireModel):
    """How one recolour target came out. Colours are sRGB hex and CIELAB (D65); differences CIEDE2000."""

    target: str
    requested: str = Field(description="The requested colour, #RRGGBB.")
    achieved: str | None = Field(description="The colour the target came out in, #RRGGBB (null: not found).")
    requested_lab: list[float] = Field(description="CIELAB L*, a*, b* of the requested colour.")
    achieved_lab: list[float] | None = None
    delta_e: float | None = Field(description="CIEDE2000 between requested and achieved (kL as configured).")
    delta_e_before_correction: float | None = Field(
        default=None, description="The measurement before color_qa.mode 'correct' changed the pixels."
    )
    pixels: int = Field(description="Pixels of the changed region attributed to this target.")
    ambiguous: bool = Field(
        default=False, description="Another target's colour is within CIEDE2000 10: the split may be wrong."
    )
    passed: bool


class Preservation(WireModel):
    """Outside the changed region, the output against the baseline (the conditioned base image)."""

    delta_e_mean: float
    delta_e_p95: float
    ssim_l: float = Field(description="SSIM on L* (1 = identical structure).")


class CandidateColor(WireModel):
    index: int = Field(description="0-based; generated with seed params.seed + index.")
    seed: int
    delta_e: float | None = Field(description="The worst target's CIEDE2000 (null: nothing measurable).")
    global_change: bool


class ColorQa(WireModel):
    """The colour check of a recolour (request `color_qa`). Added in edit-completed v1 without a bump."""

    mode: Literal["measure", "correct"]
    max_delta_e: float
    k_l: float = Field(description="CIEDE2000 lightness weight kL (2 for textiles).")
    passed: bool = Field(description="Every target within max_delta_e.")
    changed_fraction: float = Field(description="Share of the image that changed (0-1).")
    no_change_detected: bool
    global_change: bool
    corrected: bool = Field(default=False, description="A correction was applied (mode 'correct').")
    targets: list[TargetColor]
    preservation: Preservation | None = None
    chosen_candidate: int = 0
    candidates: list[CandidateColor] = Field(default_factory=list)


class ModerationScore(WireModel):
    part: str = Field(description="'image', 'references[i]' or 'output'.")
    score: float = Field(description="The classifier's probability of the watched label (0-1).")
    flagged: bool


class ModerationReport(WireModel):
    """What moderation saw. Added in edit-completed v1 without a version bump."""

    model: str
    revision: str | None = None
    label: str
    threshold: float
    inputs: list[ModerationScore] = Field(default_factory=list)
    output: ModerationScore | None = None
    outputs: list[ModerationScore] = Field(
        default_factory=list,
        description="With num_images > 1: one score per generated image ('outputs[i]'); a flagged one is "
        "withheld and the others delivered.",
    )
    prompt_rule: str | None = Field(
        default=None, description="The rule that flagged the prompt (never the matched text)."
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
    negative_prompt: str | None = Field(
        default=None, description="The negative prompt used (null: none, or guidance did not run)."
    )
    acceleration: Literal["none", "regular", "high"] = Field(
        default="none", description="The speed tier that ran (transformer_passes says what it skipped)."
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
    outputs: list[OutputInfo] = Field(
        default_factory=list,
        description="Every image delivered, in seed order (num_images); `output` is the first of them. "
        "Added in edit-completed v1 without a version bump.",
    )
    color_qa: ColorQa | None = Field(
        default=None,
        description="The colour check of a recolour (of `output`, the first image); null when it did not "
        "run.",
    )
    moderation: ModerationReport | None = Field(
        default=None, description="Moderation scores; null when moderation is off or never ran."
    )
