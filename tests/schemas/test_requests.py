"""Every field rule of the edit-request contract (schema_version 1) and the recolour prompt compiler."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.requests import (
    MAX_PROMPT_CHARS,
    MAX_REFERENCES_HARD,
    RECOLOR_TEMPLATE,
    EditRequest,
    OutputAlpha,
    OutputFormat,
    OutputSpec,
    RecolorInstruction,
    compile_prompt,
    hex_to_rgb,
)

BASE: dict[str, Any] = {"request_id": "req-1", "image": "inputs/shoe.png", "prompt": "make it sunny"}
_DROP = object()


def payload(**changes: Any) -> dict[str, Any]:
    """The base request with fields changed; a field set to `_DROP` is removed."""
    body = {**BASE, **changes}
    return {key: value for key, value in body.items() if value is not _DROP}


def build(**changes: Any) -> EditRequest:
    return EditRequest.model_validate(payload(**changes))


def error_locs(**changes: Any) -> list[tuple[int | str, ...]]:
    with pytest.raises(ValidationError) as info:
        build(**changes)
    return [tuple(error["loc"]) for error in info.value.errors()]


def error_types(**changes: Any) -> list[str]:
    with pytest.raises(ValidationError) as info:
        build(**changes)
    return [error["type"] for error in info.value.errors()]


def model_error(**changes: Any) -> str:
    """The message of a model-level (cross-field) validation error."""
    with pytest.raises(ValidationError) as info:
        build(**changes)
    (error,) = info.value.errors()
    assert error["loc"] == ()
    return str(error["msg"])


def test_minimal_request_gets_the_documented_defaults() -> None:
    request = build()
    assert request.schema_version == 1
    assert request.references == []
    assert request.recolor is None
    assert request.num_inference_steps == 50
    assert request.guidance_scale == 4.0
    assert request.seed is None
    assert request.width is None
    assert request.height is None
    assert request.output is None
    assert request.metadata == {}
    assert request.deadline is None
    assert request.progress is None


# --- request_id ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_id",
    ["r", "req-1", "A.b_c:d-9", "x" * 128, "0", "order:42.item_7-v2", "...", "---"],
)
def test_request_id_accepts_the_allowed_alphabet_up_to_128_chars(request_id: str) -> None:
    assert build(request_id=request_id).request_id == request_id


@pytest.mark.parametrize(
    "request_id",
    [
        "",
        "x" * 129,
        "has space",
        " leading",
        "trailing ",
        "a/b",
        "../etc/passwd",
        "a\\b",
        "réq",
        "请求",
        "emoji-\N{GRINNING FACE}",
        "tab\tid",
        "line\nbreak",
        "abc\n",
        "a+b",
        "a#b",
        "a?b",
    ],
)
def test_request_id_rejects_anything_else(request_id: str) -> None:
    assert error_locs(request_id=request_id) == [("request_id",)]


def test_request_id_is_required_and_must_be_a_string() -> None:
    assert error_types(request_id=_DROP) == ["missing"]
    assert error_locs(request_id=123) == [("request_id",)]


# --- image and references --------------------------------------------------------------------------


def test_image_is_required() -> None:
    assert error_types(image=_DROP) == ["missing"]
    assert error_locs(image=None) == [("image",)]


def test_image_must_be_non_empty_and_bounded() -> None:
    assert error_locs(image="") == [("image",)]
    assert build(image="s3://bucket/" + "k" * (1100 - len("s3://bucket/"))).image.startswith("s3://")
    # 4096, not S3's 1024-byte keys: a presigned https link with a session token runs past 1100 characters.
    presigned = "https://b.s3.amazonaws.com/k.png?X-Amz-Security-Token=" + "t" * 2000
    assert build(image=presigned).image == presigned
    assert error_locs(image="k" * 4097) == [("image",)]


def test_references_accept_up_to_the_hard_cap() -> None:
    refs = [f"refs/{i}.png" for i in range(MAX_REFERENCES_HARD)]
    assert MAX_REFERENCES_HARD == 16
    assert build(references=refs).references == refs


def test_references_beyond_the_hard_cap_are_rejected() -> None:
    refs = [f"refs/{i}.png" for i in range(MAX_REFERENCES_HARD + 1)]
    assert error_locs(references=refs) == [("references",)]


def test_each_reference_must_be_non_empty() -> None:
    assert error_locs(references=["refs/a.png", ""]) == [("references", 1)]


def test_references_must_be_a_list() -> None:
    assert error_locs(references="refs/a.png") == [("references",)]


# --- prompt and recolor ----------------------------------------------------------------------------


def test_prompt_or_recolor_is_required() -> None:
    assert "either prompt or recolor is required" in model_error(prompt=_DROP)
    assert "either prompt or recolor is required" in model_error(prompt=None)


def test_recolor_alone_is_enough() -> None:
    request = build(prompt=_DROP, recolor=[{"target": "the sneakers", "color": "#1E90FF"}])
    assert request.prompt is None
    assert request.recolor is not None
    assert request.recolor[0].target == "the sneakers"


def test_prompt_and_recolor_together_are_allowed() -> None:
    request = build(recolor=[{"target": "the bag", "color": "#000"}])
    assert request.prompt == "make it sunny"
    assert request.recolor is not None


def test_prompt_length_bounds() -> None:
    assert MAX_PROMPT_CHARS == 2000
    assert len(build(prompt="p" * 2000).prompt or "") == 2000
    assert error_locs(prompt="p" * 2001) == [("prompt",)]
    assert error_locs(prompt="") == [("prompt",)]


def test_empty_recolor_list_is_rejected_even_with_a_prompt() -> None:
    assert error_locs(recolor=[]) == [("recolor",)]


def test_empty_recolor_list_without_prompt_is_rejected() -> None:
    with pytest.raises(ValidationError):
        build(prompt=_DROP, recolor=[])


def test_at_most_16_recolor_instructions() -> None:
    items = [{"target": f"part {i}", "color": "#123456"} for i in range(16)]
    assert len(build(recolor=items).recolor or []) == 16
    assert error_locs(recolor=[*items, {"target": "one more", "color": "#123456"}]) == [("recolor",)]


@pytest.mark.parametrize("color", ["#1E90FF", "#1e90ff", "#1e90FF", "#000000", "#FFF", "#fff", "#a1B"])
def test_recolor_color_accepts_rrggbb_and_rgb(color: str) -> None:
    assert RecolorInstruction(target="the sneakers", color=color).color == color


@pytest.mark.parametrize(
    "color",
    [
        "1E90FF",
        "#1E90F",
        "#GGGGGG",
        "blue",
        "",
        "#",
        "#1E",
        "#1E90",
        "#1E90FFA",
        "#1E90FF80",
        "##1E90FF",
        " #1E90FF",
        "#1E90FF ",
        "#1E90FF\n",
        "rgb(30,144,255)",
        "0x1E90FF",
    ],
)
def test_recolor_color_rejects_everything_else(color: str) -> None:
    assert error_locs(recolor=[{"target": "the sneakers", "color": color}]) == [("recolor", 0, "color")]


def test_recolor_color_must_be_a_string() -> None:
    assert error_locs(recolor=[{"target": "x", "color": 0x1E90FF}]) == [("recolor", 0, "color")]


def test_recolor_target_must_be_non_empty_and_bounded() -> None:
    assert error_locs(recolor=[{"target": "", "color": "#fff"}]) == [("recolor", 0, "target")]
    assert build(recolor=[{"target": "t" * 200, "color": "#fff"}]).recolor is not None
    assert error_locs(recolor=[{"target": "t" * 201, "color": "#fff"}]) == [("recolor", 0, "target")]


def test_recolor_fields_are_required() -> None:
    assert error_locs(recolor=[{"color": "#fff"}]) == [("recolor", 0, "target")]
    assert error_locs(recolor=[{"target": "the bag"}]) == [("recolor", 0, "color")]


def test_the_failing_recolor_item_is_located_by_index() -> None:
    items = [{"target": "ok", "color": "#fff"}, {"target": "bad", "color": "blue"}]
    assert error_locs(recolor=items) == [("recolor", 1, "color")]


def test_whitespace_only_prompt_without_recolor_is_rejected() -> None:
    with pytest.raises(ValidationError):
        build(prompt="   ")


def test_whitespace_only_recolor_target_is_rejected() -> None:
    with pytest.raises(ValidationError):
        build(recolor=[{"target": "   ", "color": "#fff"}])


# --- sampling options ------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [25, 26, 40, 50])
def test_num_inference_steps_within_bounds(steps: int) -> None:
    assert build(num_inference_steps=steps).num_inference_steps == steps


@pytest.mark.parametrize("steps", [24, 51, 0, -1, 1000])
def test_num_inference_steps_out_of_bounds(steps: int) -> None:
    assert error_locs(num_inference_steps=steps) == [("num_inference_steps",)]


def test_num_inference_steps_must_be_whole() -> None:
    assert error_locs(num_inference_steps=30.5) == [("num_inference_steps",)]


@pytest.mark.parametrize("scale", [0.0, 1, 3.5, 4.0, 30.0])
def test_guidance_scale_within_bounds(scale: float) -> None:
    assert build(guidance_scale=scale).guidance_scale == scale


@pytest.mark.parametrize("scale", [-0.1, -1.0, 30.01, 100.0, float("nan"), float("inf"), float("-inf")])
def test_guidance_scale_out_of_bounds(scale: float) -> None:
    assert error_locs(guidance_scale=scale) == [("guidance_scale",)]


@pytest.mark.parametrize("seed", [0, 1, 42, 2**63 - 1])
def test_seed_accepts_non_negative_64_bit_values(seed: int) -> None:
    assert build(seed=seed).seed == seed


def test_seed_is_optional() -> None:
    assert build(seed=None).seed is None


@pytest.mark.parametrize("seed", [-1, -(2**31), 2**63])
def test_seed_rejects_negative_and_oversized(seed: int) -> None:
    assert error_locs(seed=seed) == [("seed",)]


# --- size ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height"), [(64, 64), (512, 768), (1024, 1024), (4096, 4096), (1008, 16 * 40)]
)
def test_size_in_multiples_of_16(width: int, height: int) -> None:
    request = build(width=width, height=height)
    assert (request.width, request.height) == (width, height)


@pytest.mark.parametrize("bad", [520, 1000, 1023, 17, 48, 0, -16, 4112, 8192])
def test_width_must_be_a_multiple_of_16_within_bounds(bad: int) -> None:
    assert error_locs(width=bad, height=512) == [("width",)]


@pytest.mark.parametrize("bad", [520, 1000, 1023, 17, 48, 0, -16, 4112, 8192])
def test_height_must_be_a_multiple_of_16_within_bounds(bad: int) -> None:
    assert error_locs(width=512, height=bad) == [("height",)]


def test_width_and_height_must_be_given_together() -> None:
    assert "width and height must be given together" in model_error(width=512)
    assert "width and height must be given together" in model_error(height=512)


# --- output ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_output_format_accepts_png_jpeg_webp(fmt: str) -> None:
    request = build(output={"format": fmt})
    assert request.output is not None
    assert request.output.format == OutputFormat(fmt)


@pytest.mark.parametrize("fmt", ["gif", "jpg", "PNG", "JPEG", "tiff", "", None])
def test_output_format_rejects_others(fmt: str | None) -> None:
    assert error_locs(output={"format": fmt}) == [("output", "format")]


def test_output_defaults_to_png_and_no_uri() -> None:
    spec = OutputSpec()
    assert spec.format is OutputFormat.PNG
    assert spec.uri is None
    assert spec.background == "#FFFFFF"
    assert spec.alpha is OutputAlpha.AUTO
    assert build(output={}).output == spec


@pytest.mark.parametrize("color", ["#000000", "#1e90ff", "#FFF"])
def test_output_background_is_a_hex_colour(color: str) -> None:
    request = build(output={"background": color})
    assert request.output is not None
    assert request.output.background == color
    assert hex_to_rgb("#1e90ff") == (30, 144, 255)
    assert hex_to_rgb("#FFF") == (255, 255, 255)


@pytest.mark.parametrize("color", ["white", "#12345", "1E90FF", "#GGGGGG", "", None, 0xFFFFFF])
def test_output_background_rejects_anything_else(color: object) -> None:
    assert error_locs(output={"background": color}) == [("output", "background")]


@pytest.mark.parametrize(
    ("alpha", "fmt"),
    [("keep", "png"), ("keep", "webp"), ("flatten", "jpeg"), ("auto", "jpeg"), ("flatten", "png")],
)
def test_output_alpha_modes(alpha: str, fmt: str) -> None:
    request = build(output={"alpha": alpha, "format": fmt})
    assert request.output is not None
    assert request.output.alpha is OutputAlpha(alpha)


def test_keeping_alpha_in_a_jpeg_is_an_invalid_event() -> None:
    with pytest.raises(ValidationError) as info:
        build(output={"alpha": "keep", "format": "jpeg"})
    (error,) = info.value.errors()
    assert error["loc"] == ("output",)
    assert "alpha 'keep'" in error["msg"]
    assert "jpeg" in error["msg"]


@pytest.mark.parametrize("alpha", ["KEEP", "transparent", "", None, True])
def test_output_alpha_rejects_anything_else(alpha: object) -> None:
    assert error_locs(output={"alpha": alpha}) == [("output", "alpha")]


def test_pure_recolor() -> None:
    assert build(prompt=_DROP, recolor=[{"target": "x", "color": "#fff"}]).is_pure_recolor
    assert not build(recolor=[{"target": "x", "color": "#fff"}]).is_pure_recolor
    assert not build().is_pure_recolor


def test_output_uri_bounds() -> None:
    assert error_locs(output={"uri": ""}) == [("output", "uri")]
    assert error_locs(output={"uri": "k" * 1101}) == [("output", "uri")]
    assert build(output={"uri": "s3://out/x.png"}).output == OutputSpec(uri="s3://out/x.png")


@pytest.mark.parametrize(
    ("fmt", "content_type", "extension"),
    [("png", "image/png", "png"), ("jpeg", "image/jpeg", "jpg"), ("webp", "image/webp", "webp")],
)
def test_output_format_content_type_and_extension(fmt: str, content_type: str, extension: str) -> None:
    assert OutputFormat(fmt).content_type == content_type
    assert OutputFormat(fmt).extension == extension


# --- metadata --------------------------------------------------------------------------------------


def test_metadata_accepts_a_string_map_up_to_the_limits() -> None:
    metadata = {f"k{i}": "v" * 1024 for i in range(31)} | {"k" * 128: ""}
    assert build(metadata=metadata).metadata == metadata


def test_metadata_at_most_32_entries() -> None:
    assert error_locs(metadata={f"k{i}": "v" for i in range(33)}) == [("metadata",)]


def test_metadata_keys_are_1_to_128_chars() -> None:
    assert error_locs(metadata={"": "v"})[0][0] == "metadata"
    assert error_locs(metadata={"k" * 129: "v"})[0][0] == "metadata"


def test_metadata_values_are_strings_up_to_1024_chars() -> None:
    assert error_locs(metadata={"k": "v" * 1025}) == [("metadata", "k")]
    assert error_locs(metadata={"k": 1}) == [("metadata", "k")]
    assert error_locs(metadata={"k": None}) == [("metadata", "k")]
    assert error_locs(metadata={"k": {"nested": "x"}}) == [("metadata", "k")]


def test_metadata_must_be_a_map() -> None:
    assert error_locs(metadata=["a", "b"]) == [("metadata",)]


# --- deadline, schema_version, progress ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-01-01T12:00:00Z", datetime(2026, 1, 1, 12, tzinfo=UTC)),
        ("2026-01-01T14:00:00+02:00", datetime(2026, 1, 1, 12, tzinfo=UTC)),
        (datetime(2026, 1, 1, 7, tzinfo=timezone(timedelta(hours=-5))), datetime(2026, 1, 1, 12, tzinfo=UTC)),
    ],
)
def test_deadline_with_a_timezone_is_accepted(value: object, expected: datetime) -> None:
    deadline = build(deadline=value).deadline
    assert deadline is not None
    assert deadline.tzinfo is not None
    assert deadline == expected


@pytest.mark.parametrize("value", ["2026-01-01T12:00:00", "2026-01-01 12:00:00", datetime(2026, 1, 1, 12)])
def test_deadline_without_a_timezone_is_rejected(value: object) -> None:
    with pytest.raises(ValidationError) as info:
        build(deadline=value)
    (error,) = info.value.errors()
    assert error["loc"] == ("deadline",)
    assert "timezone" in error["msg"]


def test_deadline_must_be_a_datetime() -> None:
    assert error_locs(deadline="tomorrow") == [("deadline",)]


def test_schema_version_must_be_1() -> None:
    assert build(schema_version=1).schema_version == 1
    for version in (0, 2, None, "v1"):
        assert error_locs(schema_version=version) == [("schema_version",)]


def test_progress_is_an_optional_bool() -> None:
    assert build(progress=True).progress is True
    assert error_locs(progress="maybe") == [("progress",)]


# --- strictness ------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["promt", "steps", "negativePrompt", "requestId", "schemaVersion"])
def test_unknown_top_level_fields_are_rejected(field: str) -> None:
    with pytest.raises(ValidationError) as info:
        EditRequest.model_validate({**BASE, field: "x"})
    assert [(e["loc"], e["type"]) for e in info.value.errors()] == [((field,), "extra_forbidden")]


def test_unknown_nested_fields_are_rejected() -> None:
    assert error_types(recolor=[{"target": "x", "color": "#fff", "strength": 1}]) == ["extra_forbidden"]
    assert error_locs(output={"format": "png", "dpi": 300}) == [("output", "dpi")]


def test_unknown_fields_are_rejected_from_json_too() -> None:
    with pytest.raises(ValidationError) as info:
        EditRequest.model_validate_json(json.dumps({**BASE, "colour": "#fff"}))
    assert info.value.errors()[0]["type"] == "extra_forbidden"


def test_models_are_frozen() -> None:
    request = build(recolor=[{"target": "x", "color": "#fff"}], output={"format": "png"})
    with pytest.raises(ValidationError):
        request.prompt = "other"  # type: ignore[misc]
    assert request.recolor is not None
    with pytest.raises(ValidationError):
        request.recolor[0].color = "#000"  # type: ignore[misc]
    assert request.output is not None
    with pytest.raises(ValidationError):
        request.output.format = OutputFormat.JPEG  # type: ignore[misc]


def test_models_are_hashable_values() -> None:
    a = RecolorInstruction(target="x", color="#fff")
    assert a == RecolorInstruction(target="x", color="#fff")
    assert hash(a) == hash(RecolorInstruction(target="x", color="#fff"))


def test_request_round_trips_through_json() -> None:
    request = build(
        references=["refs/a.png"],
        recolor=[{"target": "the sneakers", "color": "#1E90FF"}],
        seed=7,
        width=512,
        height=768,
        output={"uri": "s3://out/x.webp", "format": "webp"},
        metadata={"sku": "123"},
        deadline="2026-01-01T12:00:00Z",
        progress=True,
    )
    assert EditRequest.model_validate_json(request.model_dump_json()) == request


# --- the recolour prompt compiler ------------------------------------------------------------------

SNEAKERS = (
    "Recolor the sneakers to the exact sRGB color #1E90FF (RGB 30, 144, 255). "
    "Keep its material, texture, shading and everything else in the image unchanged."
)
LACES = (
    "Recolor the laces to the exact sRGB color #FF00AA (RGB 255, 0, 170). "
    "Keep its material, texture, shading and everything else in the image unchanged."
)


def test_compile_one_instruction_exactly() -> None:
    assert compile_prompt(None, [RecolorInstruction(target="the sneakers", color="#1E90FF")]) == SNEAKERS


def test_compile_two_instructions_exactly() -> None:
    items = [
        RecolorInstruction(target="the sneakers", color="#1e90ff"),
        RecolorInstruction(target="the laces", color="#f0a"),
    ]
    assert compile_prompt(None, items) == f"{SNEAKERS} {LACES}"


def test_compile_puts_the_free_prompt_first() -> None:
    items = (RecolorInstruction(target="the sneakers", color="#1E90FF"),)
    assert compile_prompt("Make the sky blue.", items) == f"Make the sky blue. {SNEAKERS}"


def test_compile_strips_prompt_and_target() -> None:
    items = [RecolorInstruction(target="  the sneakers ", color="#1E90FF")]
    assert compile_prompt("  Make the sky blue.\n", items) == f"Make the sky blue. {SNEAKERS}"


def test_compile_prompt_only() -> None:
    assert compile_prompt("a cat on a sofa", []) == "a cat on a sofa"
    assert compile_prompt(None, ()) == ""


@pytest.mark.parametrize(
    ("color", "hex6", "rgb"),
    [
        ("#f0a", "#FF00AA", (255, 0, 170)),
        ("#FFF", "#FFFFFF", (255, 255, 255)),
        ("#000", "#000000", (0, 0, 0)),
        ("#1a2", "#11AA22", (17, 170, 34)),
        ("#1e90ff", "#1E90FF", (30, 144, 255)),
        ("#AbCdEf", "#ABCDEF", (171, 205, 239)),
    ],
)
def test_hex6_expands_shorthand_to_upper_case_and_the_triple_matches(
    color: str, hex6: str, rgb: tuple[int, int, int]
) -> None:
    item = RecolorInstruction(target="it", color=color)
    assert item.hex6 == hex6
    expected = RECOLOR_TEMPLATE.format(target="it", hex=hex6, r=rgb[0], g=rgb[1], b=rgb[2])
    assert compile_prompt(None, [item]) == expected
    assert f"(RGB {rgb[0]}, {rgb[1]}, {rgb[2]})" in expected


def test_compiled_prompt_property_of_the_request() -> None:
    request = build(prompt="Make the sky blue.", recolor=[{"target": "the sneakers", "color": "#1E90FF"}])
    assert request.compiled_prompt == f"Make the sky blue. {SNEAKERS}"
    assert (
        build(prompt=_DROP, recolor=[{"target": "the sneakers", "color": "#1E90FF"}]).compiled_prompt
        == SNEAKERS
    )
    assert build().compiled_prompt == "make it sunny"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", True),
        ("num_inference_steps", "30"),
        ("guidance_scale", True),
        ("width", 512.0),
        ("progress", 1),
    ],
)
def test_numbers_and_flags_are_not_coerced_from_other_json_types(field: str, value: object) -> None:
    body = {"request_id": "r", "image": "a.png", "prompt": "p", "width": 512, "height": 512, field: value}
    with pytest.raises(ValidationError) as info:
        EditRequest.model_validate_json(json.dumps(body))
    assert info.value.errors()[0]["loc"][0] == field
