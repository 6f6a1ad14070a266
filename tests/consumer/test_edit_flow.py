"""End to end on a real broker and S3 server with the tiny model: request in, object and result out."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable

import pytest
from PIL import Image

from consumer.settings import Settings
from pipeline import Editor
from schemas.results import EditStatus
from tests.consumer.harness import (
    output_objects,
    png_bytes,
    prepare,
    publish,
    request,
    results,
    running_worker,
    stage_image,
    wait_for_no_lag,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


async def test_recolor_request_produces_object_and_result(
    make_settings: Callable[..., Settings], tiny_editor: Editor
) -> None:
    settings = make_settings()
    store = await prepare(settings)
    image = stage_image(store, settings, "shots/shoe.png", png_bytes(160, 96))
    req = request(
        settings, image, recolor=[{"target": "the shoe", "color": "#1E90FF"}], seed=7, metadata={"sku": "A-1"}
    )

    async with running_worker(settings, lambda: tiny_editor):
        await publish(settings, req)
        (result,) = await results(settings, count=1)
        assert await wait_for_no_lag(settings) == {f"{settings.kafka.request_topic}-{p}": 0 for p in range(2)}

    assert result.request_id == req.request_id
    assert result.status is EditStatus.SUCCEEDED
    assert result.error is None
    assert result.output is not None
    assert result.output.uri == f"s3://{settings.s3.output_bucket}/edits/{req.request_id}.png"
    assert (result.output.width, result.output.height) == (160, 96)
    assert result.params is not None
    assert result.params.seed == 7
    assert "#1E90FF" in result.params.prompt
    assert "the shoe" in result.params.prompt
    assert result.cost.output_megapixels == pytest.approx(160 * 96 / 1e6)
    assert result.cost.usd == pytest.approx(160 * 96 / 1e6 * 0.002)
    assert result.cost.input_megapixels == pytest.approx(160 * 96 / 1e6)
    assert result.timing_ms.inference > 0
    assert result.timing_ms.fetch > 0
    assert result.timing_ms.upload > 0
    assert result.timing_ms.total >= result.timing_ms.queued + result.timing_ms.inference
    assert result.metadata == {"sku": "A-1"}
    assert result.attempt == 1
    assert result.worker == settings.worker.name

    objects = output_objects(store, settings)
    data = objects[f"edits/{req.request_id}.png"]
    assert len(objects) == 1
    assert hashlib.sha256(data).hexdigest() == result.output.sha256
    assert len(data) == result.output.bytes
    assert Image.open(io.BytesIO(data)).size == (160, 96)


async def test_multi_reference_request_with_explicit_size_and_format(
    make_settings: Callable[..., Settings], tiny_editor: Editor
) -> None:
    settings = make_settings()
    store = await prepare(settings)
    base = stage_image(store, settings, "base.png", png_bytes(128, 128))
    refs = [
        stage_image(store, settings, "ref-a.png", png_bytes(96, 160, (10, 200, 10))),
        "ref-b.png",
    ]
    stage_image(store, settings, "ref-b.png", png_bytes(160, 96, (10, 10, 200)))
    req = request(
        settings,
        base,
        references=refs,
        prompt="put the logo from image 2 on the shirt of image 1",
        width=112,
        height=80,
        output={"format": "jpeg"},
    )
    async with running_worker(settings, lambda: tiny_editor):
        await publish(settings, req)
        (result,) = await results(settings, count=1)

    assert result.status is EditStatus.SUCCEEDED, result.error
    assert result.output is not None
    assert result.params is not None
    assert result.output.uri.endswith(f"{req.request_id}.jpg")
    assert (result.output.width, result.output.height) == (112, 80)
    assert result.params.references == 2
    assert result.params.seed >= 0  # chosen by the worker and reported
    assert result.cost.input_megapixels == pytest.approx((128 * 128 + 96 * 160 + 160 * 96) / 1e6)
    data = output_objects(store, settings)[f"edits/{req.request_id}.jpg"]
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "JPEG"
        assert img.size == (112, 80)


async def test_same_request_id_twice_is_answered_from_the_stored_output(
    make_settings: Callable[..., Settings], tiny_editor: Editor
) -> None:
    settings = make_settings()
    store = await prepare(settings)
    image = stage_image(store, settings, "a.png", png_bytes(64, 64))
    req = request(settings, image)
    async with running_worker(settings, lambda: tiny_editor):
        await publish(settings, req)
        await results(settings, count=1)
        await publish(settings, req)
        first, second = await results(settings, count=2)
        assert await wait_for_no_lag(settings) == {f"{settings.kafka.request_topic}-{p}": 0 for p in range(2)}

    assert first.output == second.output
    assert first.params == second.params
    assert first.cost == second.cost
    assert second.timing_ms.inference == 0.0  # no GPU work the second time
    assert len(output_objects(store, settings)) == 1
