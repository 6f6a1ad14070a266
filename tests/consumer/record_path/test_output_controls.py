"""Output controls on the production record path: encoder quality takes effect in the bytes, a format
that has no such control refuses it by name, and a presigned download link comes with each result when
the operator sets its lifetime (a fresh one for a redelivery)."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from PIL import Image

from schemas.errors import ErrorCode
from schemas.results import EditStatus
from tests.consumer.record_path.path import RecordPath, png

pytestmark = pytest.mark.timeout(60)


async def test_jpeg_and_webp_quality_and_lossless_take_effect_in_the_bytes(path: RecordPath) -> None:
    image = path.stage("a.png", png(128, 96))
    forms = {
        "jpeg-30": {"format": "jpeg", "quality": 30},
        "jpeg-95": {"format": "jpeg", "quality": 95},
        "webp-30": {"format": "webp", "quality": 30},
        "webp-lossless": {"format": "webp", "lossless": True},
    }
    requests = {
        name: path.request(image, seed=5, output={**spec, "metadata": "strip"})
        for name, spec in forms.items()
    }
    for req in requests.values():
        assert await path.handle(req)
    by_id = {event.request_id: event for event in path.results()}
    sizes = {}
    for name, req in requests.items():
        event = by_id[req.request_id]
        assert event.status is EditStatus.SUCCEEDED, event.error
        assert event.output is not None
        sizes[name] = event.output.bytes
        data = path.store.read(event.output.uri)
        assert Image.open(io.BytesIO(data)).format == forms[name]["format"].upper()
    assert sizes["jpeg-30"] < sizes["jpeg-95"]
    assert sizes["webp-30"] < sizes["webp-lossless"]


@pytest.mark.parametrize(
    ("output", "words"),
    [
        ({"format": "png", "quality": 80}, "png is lossless"),
        ({"format": "jpeg", "lossless": True}, "webp only"),
    ],
)
async def test_a_control_the_format_lacks_is_refused_by_name(
    path: RecordPath, output: dict[str, object], words: str
) -> None:
    import json

    body = {"request_id": "r-ctl", "image": path.stage("a.png", png(64, 64)), "prompt": "x", "output": output}
    assert await path.handle(json.dumps(body).encode())
    event = path.result()
    assert event.error is not None
    assert event.error.code is ErrorCode.INVALID_EVENT
    assert words in event.error.message


async def test_a_presigned_link_comes_with_the_result_and_a_redelivery_gets_a_fresh_one(
    make_path: Callable[..., RecordPath],
) -> None:
    path = make_path(s3={"presign_ttl_s": 600})
    req = path.request(path.stage("a.png", png(64, 64)))
    before = datetime.now(UTC)
    assert await path.handle(req, offset=3)
    assert await path.handle(req, offset=3)
    first, again = path.results()
    for event in (first, again):
        assert event.output is not None
        assert event.output.url is not None
        assert "X-Amz-Expires=600" in event.output.url
        assert event.output.url_expires_at is not None
        assert (
            before + timedelta(seconds=590)
            <= event.output.url_expires_at
            <= datetime.now(UTC) + timedelta(seconds=600)
        )
    assert first.output is not None
    assert again.output is not None
    assert again.output.url_expires_at >= first.output.url_expires_at  # type: ignore[operator]


async def test_no_link_by_default(path: RecordPath) -> None:
    assert await path.handle(path.request(path.stage("a.png", png(64, 64))))
    output = path.result().output
    assert output is not None
    assert output.url is None
    assert output.url_expires_at is None
