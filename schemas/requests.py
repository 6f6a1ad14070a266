"""The edit request (schema_version 1) and the recolour prompt compiler.

Producers in any language publish this JSON to the request topic; `schemas/jsonschema/` holds the
published JSON Schema. Limits that operators may tune (e.g. the number of references) are enforced by
the worker against its settings; the hard caps here only bound what a record can make us parse.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictFloat,
    StrictInt,
    StringConstraints,
    field_validator,
    model_validator,
)

from schemas._base import WireModel

REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
HEX_COLOR_PATTERN = r"^#(?:[0-9A-Fa-f]{6}|[0-9A-Fa-f]{3})$"
MAX_PROMPT_CHARS = 2000
# Unanchored, as in JSON Schema: "contains at least one non-whitespace character".
NOT_BLANK = r"\S"
# A hard cap on what one record may list; the configurable limit (default 4) is checked by the worker.
MAX_REFERENCES_HARD = 16
MIN_STEPS, MAX_STEPS = 25, 50
# A hard cap on the adapters one record may list; the configurable limit (default 3) is checked by the worker.
MAX_ADAPTERS_HARD = 8
MIN_ADAPTER_SCALE, MAX_ADAPTER_SCALE = -2.0, 2.0

RequestId = Annotated[str, StringConstraints(pattern=REQUEST_ID_PATTERN)]
ImageRef = Annotated[str, StringConstraints(min_length=1, max_length=1100)]
# An input or adapter: an S3 reference (as ImageRef) or an https URL, which may be a presigned link with a
# session token (well over 1100 characters). Widened in edit-request v1: an older worker refuses a URL this
# long as INVALID_EVENT, and any https URL as not an s3:// URI.
InputRef = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
INPUT_REF_FORMS = (
    "s3://bucket/key, a bare key in the input bucket, or an https:// URL on a host the worker allows "
    "(KLEIN_EDIT_URL_INPUTS__*; a presigned link is such a URL; added in v1)"
)


HexColor = Annotated[str, StringConstraints(pattern=HEX_COLOR_PATTERN)]
WHITE = "#FFFFFF"


def hex6(color: str) -> str:
    """A `HexColor` as upper-case #RRGGBB (a #RGB shorthand is expanded)."""
    digits = color[1:]
    if len(digits) == 3:
        digits = "".join(ch * 2 for ch in digits)
    return "#" + digits.upper()


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    """A `HexColor` as an sRGB (r, g, b) triple of 0-255 values."""
    digits = hex6(color)
    return int(digits[1:3], 16), int(digits[3:5], 16), int(digits[5:7], 16)


class OutputFormat(StrEnum):
    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"

    @property
    def content_type(self) -> str:
        return f"image/{self.value}"

    @property
    def extension(self) -> str:
        return "jpg" if self is OutputFormat.JPEG else self.value

    @property
    def supports_alpha(self) -> bool:
        return self is not OutputFormat.JPEG


class OutputAlpha(StrEnum):
    """What happens to the base image's transparency (see `OutputSpec.alpha`)."""

    FLATTEN = "flatten"
    KEEP = "keep"
    AUTO = "auto"


class OutputMetadata(StrEnum):
    """What the output file says about its origin (the result event's provenance is always complete)."""

    MARK = "mark"  # XMP with the IPTC digital source type, plus a signed C2PA manifest when configured
    STRIP = "strip"  # neither: for platforms that re-encode downstream (docs/provenance.md)


class RecolorInstruction(WireModel):
    """Paint `target` in exactly `color`; e-commerce systems send these instead of prompts."""

    target: Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NOT_BLANK)] = Field(
        description="What to recolour, in words, e.g. 'the sneakers'."
    )
    color: HexColor = Field(description="Exact sRGB colour as #RRGGBB or #RGB.")

    @property
    def hex6(self) -> str:
        """The colour as upper-case #RRGGBB (a #RGB shorthand is expanded)."""
        return hex6(self.color)


class OutputSpec(WireModel):
    uri: ImageRef | None = Field(
        default=None,
        description="s3://bucket/key (or a bare key in the output bucket). Defaults to "
        "s3://<output bucket>/<output prefix><request_id>.<ext>.",
    )
    format: OutputFormat = OutputFormat.PNG
    background: HexColor = Field(
        default=WHITE,
        description="sRGB #RRGGBB (or #RGB) that transparent areas of the inputs are composited onto "
        "before the edit.",
    )
    alpha: OutputAlpha = Field(
        default=OutputAlpha.AUTO,
        description="'flatten': an opaque output. 'keep': the base image's alpha, resized to the output "
        "size, becomes the output's alpha (png and webp only). 'auto': keep when the base image has "
        "transparency, the format has an alpha channel and the request is a pure recolor; else flatten.",
    )

    metadata: OutputMetadata = Field(
        default=OutputMetadata.MARK,
        description="'mark': the file carries XMP with the IPTC digital source type, the request id and the "
        "model, and a signed C2PA manifest when the worker has a signing key. 'strip': neither (the ICC "
        "profile stays).",
    )

    quality: StrictInt | None = Field(
        default=None,
        ge=1,
        le=100,
        description="Encoder quality for jpeg and webp, 1-100 (default 95); png is lossless and refuses it.",
    )
    lossless: StrictBool | None = Field(
        default=None, description="webp only: lossless encoding (quality then sets the effort)."
    )

    @model_validator(mode="after")
    def _alpha_needs_a_format_with_alpha(self) -> OutputSpec:
        if self.alpha is OutputAlpha.KEEP and not self.format.supports_alpha:
            raise ValueError(
                f"alpha 'keep' needs a format with an alpha channel (png or webp), not {self.format.value}"
            )
        if self.quality is not None and self.format is OutputFormat.PNG:
            raise ValueError("quality applies to jpeg and webp; png is lossless")
        if self.lossless and self.format is not OutputFormat.WEBP:
            raise ValueError(f"lossless applies to webp only, not {self.format.value}")
        return self


class AdapterRef(WireModel):
    """One LoRA adapter to apply to the transformer for this edit."""

    uri: InputRef = Field(
        description="s3://bucket/key.safetensors in an allow-listed adapter bucket, a bare key in the "
        "first adapter bucket (KLEIN_EDIT_S3__ADAPTER_BUCKETS), or an https:// URL whose path ends in "
        ".safetensors on a host the worker allows (KLEIN_EDIT_URL_INPUTS__*; added in v1). Only safetensors "
        "files are loaded."
    )
    scale: StrictFloat = Field(
        default=1.0,
        ge=MIN_ADAPTER_SCALE,
        le=MAX_ADAPTER_SCALE,
        description="Multiplies the adapter's effect (its alpha / rank scaling); 0 turns it off.",
    )


class ColorQaMode(StrEnum):
    """What the colour check does with a recolour (`color_qa.mode`)."""

    OFF = "off"
    MEASURE = "measure"  # report the colour each target came out in (CIEDE2000 against the request)
    CORRECT = "correct"  # measure, then correct the hue and chroma in OKLCh where that brings it closer


class ColorQaOnFail(StrEnum):
    FAIL = "fail"  # the result is `failed` with COLOR_OUT_OF_TOLERANCE; the best output is stored for review
    DELIVER = "deliver"  # the result succeeds with `color_qa.passed: false`


class ColorQaSpec(WireModel):
    """The colour check of a recolour. Every field is optional: the operator's settings
    (`KLEIN_EDIT_COLOR_QA__*`) give the defaults and caps."""

    mode: ColorQaMode | None = Field(
        default=None, description="Default: 'measure' when the request has recolor, else 'off'."
    )
    max_delta_e: StrictFloat | None = Field(
        default=None,
        ge=0.5,
        le=20.0,
        description="Tolerance in CIEDE2000 units: 2 strict (print brand colours), 3 the usual default, 5 "
        "lenient (GenColorBench's match threshold).",
    )
    candidates: StrictInt | None = Field(
        default=None,
        ge=1,
        le=4,
        description="Images generated with seeds seed..seed+N-1; the one closest to the colours (and not a "
        "global change) is kept. Every generated image is billed.",
    )
    on_fail: ColorQaOnFail | None = Field(
        default=None, description="When the kept image is out of tolerance."
    )


class ModerationRequest(WireModel):
    """Per-request moderation: stricter than the operator's, never looser."""

    threshold: StrictFloat | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Flag above this classifier score; at most the operator's threshold (lower is stricter).",
    )
    enabled: StrictBool | None = Field(
        default=None,
        description="false turns moderation off for this request, only where the operator allows it "
        "(KLEIN_EDIT_MODERATION__ALLOW_REQUEST_DISABLE); elsewhere the request is refused.",
    )


ImageSizePreset = Literal[
    "square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"
]
AspectRatio = Literal["1:1", "4:3", "3:4", "16:9", "9:16", "match_input"]
# The presets' sizes (as fal's image_size names them), width x height.
IMAGE_SIZE_PRESETS: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}


class EditRequest(WireModel):
    """One edit: a base image, optional references, an instruction and sampling options."""

    # The cross-field rules are published in the JSON Schema too, so producers can check them first.
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [{"required": ["prompt"]}, {"required": ["recolor"]}],
            "dependentRequired": {"width": ["height"], "height": ["width"]},
        },
    )

    schema_version: Literal[1] = 1
    request_id: RequestId = Field(description="1-128 chars of A-Za-z0-9._:- ; the result is keyed by it.")
    image: InputRef = Field(description=f"Base image: {INPUT_REF_FORMS}.")
    references: list[InputRef] = Field(
        default_factory=list,
        max_length=MAX_REFERENCES_HARD,
        description=f"Reference images (at most pipeline.max_references, default 4), each {INPUT_REF_FORMS}.",
    )
    prompt: (
        Annotated[str, StringConstraints(min_length=1, max_length=MAX_PROMPT_CHARS, pattern=NOT_BLANK)] | None
    ) = None
    recolor: list[RecolorInstruction] | None = Field(default=None, min_length=1, max_length=16)
    negative_prompt: (
        Annotated[str, StringConstraints(min_length=1, max_length=MAX_PROMPT_CHARS, pattern=NOT_BLANK)] | None
    ) = Field(
        default=None,
        description="What to steer away from; used only with classifier-free guidance (guidance_scale > 1), "
        "within the same token limit as the prompt. Added in edit-request v1.",
    )
    # Strict numbers: `"seed": true` or `"num_inference_steps": "30"` are producer bugs, not values to coerce.
    num_inference_steps: StrictInt = Field(default=50, ge=MIN_STEPS, le=MAX_STEPS)
    guidance_scale: StrictFloat = Field(default=4.0, ge=0.0, le=30.0)
    seed: StrictInt | None = Field(default=None, ge=0, le=2**63 - 1)
    width: StrictInt | None = Field(default=None, ge=64, le=4096, multiple_of=16)
    height: StrictInt | None = Field(default=None, ge=64, le=4096, multiple_of=16)
    image_size: ImageSizePreset | None = Field(
        default=None,
        description="A named output size instead of width/height: square_hd 1024x1024, square 512x512, "
        "portrait_4_3 768x1024, portrait_16_9 576x1024, landscape_4_3 1024x768, landscape_16_9 1024x576.",
    )
    aspect_ratio: AspectRatio | None = Field(
        default=None,
        description="Output aspect instead of width/height ('match_input': the base image's); with "
        "megapixels or the worker's default area.",
    )
    megapixels: StrictFloat | None = Field(
        default=None,
        ge=0.25,
        le=16.0,
        description="Output area in megapixels instead of width/height (at most the worker's "
        "KLEIN_EDIT_PIPELINE__MAX_OUTPUT_MEGAPIXELS); the aspect is aspect_ratio's or the base image's.",
    )
    num_images: StrictInt = Field(
        default=1,
        ge=1,
        le=4,
        description="Images to generate, with seeds seed, seed+1, ... (at most the worker's "
        "KLEIN_EDIT_PIPELINE__MAX_IMAGES); each is stored as its own object and billed. Added in v1.",
    )
    acceleration: Literal["none", "regular", "high"] | None = Field(
        default=None,
        description="Speed tier: 'none' runs every pass; 'regular' and 'high' skip unconditional passes as "
        "the operator defined them (KLEIN_EDIT_PIPELINE__ACCELERATION_TIERS); a tier the worker does not "
        "offer is INVALID_EVENT. Default: the worker's (KLEIN_EDIT_PIPELINE__DEFAULT_ACCELERATION).",
    )
    output: OutputSpec | None = None
    loras: list[AdapterRef] = Field(
        default_factory=list,
        max_length=MAX_ADAPTERS_HARD,
        description="LoRA adapters applied to this edit only (at most pipeline.max_adapters, default 3). "
        "Added in edit-request v1 without a version bump: an older worker ignores the field and says so in "
        "the result's warnings.",
    )
    metadata: dict[
        Annotated[str, StringConstraints(min_length=1, max_length=128)],
        Annotated[str, StringConstraints(max_length=1024)],
    ] = Field(default_factory=dict, max_length=32)
    deadline: datetime | None = Field(
        default=None, description="ISO-8601; a request picked up after it fails with DEADLINE_EXCEEDED."
    )
    progress: StrictBool | None = Field(default=None, description="Publish progress events for this request.")
    color_qa: ColorQaSpec | None = Field(
        default=None,
        description="The colour check of a recolour (measure, correct, gate, best of N). Added in "
        "edit-request v1 without a version bump.",
    )
    moderation: ModerationRequest | None = Field(
        default=None, description="Stricter moderation for this request. Added in edit-request v1."
    )
    # Not on the wire: fields of the record this worker does not know and ignored (see
    # `consumer.kafka.codec.decode_request`); reported back in the result's `warnings`.
    _ignored_fields: tuple[str, ...] = PrivateAttr(default=())

    @field_validator("deadline")
    @classmethod
    def _deadline_has_timezone(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("deadline must carry a timezone offset, e.g. 2026-01-01T12:00:00Z")
        return value

    @model_validator(mode="after")
    def _check_instruction_and_size(self) -> EditRequest:
        if self.prompt is None and not self.recolor:
            raise ValueError("either prompt or recolor is required")
        if (self.width is None) != (self.height is None):
            raise ValueError("width and height must be given together")
        forms = [
            name
            for name, value in (
                ("width/height", self.width),
                ("image_size", self.image_size),
                ("aspect_ratio", self.aspect_ratio),
                ("megapixels", self.megapixels),
            )
            if value is not None
        ]
        if self.num_images > 1 and self.color_qa is not None and (self.color_qa.candidates or 1) > 1:
            raise ValueError(
                "num_images and color_qa.candidates conflict: candidates keep one image of several, "
                "num_images keeps them all; give one"
            )
        if ("width/height" in forms and len(forms) > 1) or ("image_size" in forms and len(forms) > 1):
            raise ValueError(f"{forms[0]} and {forms[1]} conflict: give one way of sizing the output")
        return self

    @property
    def ignored_fields(self) -> tuple[str, ...]:
        """Paths of the unknown fields the record carried, e.g. `("priority", "output.dpi")`."""
        return self._ignored_fields

    def note_ignored_fields(self, paths: tuple[str, ...]) -> None:
        """Remember which unknown fields of the record were ignored (set once, by the decoder)."""
        self._ignored_fields = paths

    @property
    def compiled_prompt(self) -> str:
        return compile_prompt(self.prompt, self.recolor or ())

    @property
    def is_pure_recolor(self) -> bool:
        """Only `recolor` instructions, no free prompt: the template keeps every shape in place."""
        return self.prompt is None and bool(self.recolor)


RECOLOR_TEMPLATE = (
    "Recolor {target} to the exact sRGB color {hex} (RGB {r}, {g}, {b}). "
    "Keep its material, texture, shading and everything else in the image unchanged."
)


def compile_prompt(
    prompt: str | None, recolor: tuple[RecolorInstruction, ...] | list[RecolorInstruction]
) -> str:
    """Turn a free prompt plus recolour instructions into the one prompt the model sees.

    Each instruction renders `RECOLOR_TEMPLATE`; the free prompt (if any) comes first. The template
    states the hex code and its RGB triple because the FLUX.2 text encoder was trained on hex-coded
    colour prompts, and the triple removes any doubt about the #RGB shorthand. Hex codes are sRGB, the
    space every input is converted to before the model sees it.
    """
    parts: list[str] = [prompt.strip()] if prompt and prompt.strip() else []
    for item in recolor:
        r, g, b = hex_to_rgb(item.color)
        parts.append(RECOLOR_TEMPLATE.format(target=item.target.strip(), hex=item.hex6, r=r, g=g, b=b))
    return " ".join(parts)
