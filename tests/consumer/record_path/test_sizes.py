"""Sizes by preset, aspect ratio and megapixels on the production record path: each resolves through the
one geometry rule (multiples of 16, the area cap, 8:1), and conflicting size fields are refused naming
both."""

from __future__ import annotations

import json

import pytest

from pipeline.images import size_for_area
from schemas.errors import ErrorCode
from schemas.results import EditStatus
from tests.consumer.record_path.path import RecordPath, png

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(
    ("fields", "base", "expected"),
    [
        ({"image_size": "square"}, (300, 200), (512, 512)),
        ({"image_size": "landscape_16_9"}, (300, 200), (1024, 576)),
        ({"aspect_ratio": "9:16", "megapixels": 0.25}, (300, 200), size_for_area(9 / 16, 0.25)),
        ({"aspect_ratio": "match_input", "megapixels": 0.5}, (300, 200), size_for_area(1.5, 0.5)),
        ({"megapixels": 0.3}, (400, 100), size_for_area(4.0, 0.3)),
        ({"aspect_ratio": "1:1"}, (300, 200), size_for_area(1.0, 1.048576)),
    ],
    ids=["square", "landscape_16_9", "9:16@0.25", "match_input@0.5", "mp-only", "1:1-default-area"],
)
async def test_each_size_form_gives_the_geometry_rules_size(
    path: RecordPath, fields: dict[str, object], base: tuple[int, int], expected: tuple[int, int]
) -> None:
    image = path.stage("base.png", png(*base))
    assert await path.handle(path.request(image, **fields))
    result = path.result()
    assert result.status is EditStatus.SUCCEEDED, result.error
    assert result.output is not None
    assert (result.output.width, result.output.height) == expected
    assert expected[0] % 16 == 0
    assert expected[1] % 16 == 0


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"width": 512, "height": 512, "aspect_ratio": "1:1"}, ["width/height", "aspect_ratio"]),
        ({"image_size": "square", "megapixels": 1.0}, ["image_size", "megapixels"]),
        ({"width": 512, "height": 512, "image_size": "square"}, ["width/height", "image_size"]),
    ],
)
async def test_conflicting_size_fields_are_refused_naming_both(
    path: RecordPath, fields: dict[str, object], words: list[str]
) -> None:
    body = {"request_id": "r-size", "image": path.stage("a.png", png(64, 64)), "prompt": "x", **fields}
    assert await path.handle(json.dumps(body).encode())
    event = path.result()
    assert event.error is not None
    assert event.error.code is ErrorCode.INVALID_EVENT
    for word in words:
        assert word in event.error.message


async def test_megapixels_over_the_operators_cap_are_refused_before_any_work(path: RecordPath) -> None:
    assert await path.handle(path.request(path.stage("a.png", png(64, 64)), megapixels=8.0))
    event = path.result()
    assert event.error is not None
    assert event.error.code is ErrorCode.INVALID_EVENT
    assert "MAX_OUTPUT_MEGAPIXELS" in event.error.message
    assert path.store.reads == []
