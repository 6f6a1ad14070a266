"""Moderation end to end: a worker on the real broker and S3 with the random-weight classifier of the real
class (flagging through its weights). Nothing flagged reaches the output bucket, the offset is committed
and the request is not retried; a classifier that cannot load stops start-up with one line."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from huggingface_hub import constants

from consumer.app import build_worker
from consumer.settings import Settings
from pipeline import Editor, ModelLoadError
from pipeline.moderation.tiny import ensure_tiny_image_classifier
from schemas.errors import ErrorCode
from schemas.results import EditStatus
from tests.consumer.harness import (
    by_request,
    dead_letters,
    no_lag,
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


async def test_a_flagged_output_leaves_no_object_and_is_committed_not_retried(
    make_settings: Callable[..., Settings], tiny_editor: Editor
) -> None:
    flagging = str(ensure_tiny_image_classifier(constants.HF_HUB_CACHE, label_bias=8.0))
    settings = make_settings(moderation={"model": flagging, "check_inputs": False})
    store = await prepare(settings)
    image = stage_image(store, settings, "a.png", png_bytes(64, 64))
    req = request(settings, image)

    async with running_worker(settings, lambda: tiny_editor):
        await publish(settings, req)
        (event,) = await results(settings, count=1, settle_s=1.0)
        assert await wait_for_no_lag(settings) == no_lag(settings)
        assert await dead_letters(settings, count=0, timeout_s=1.0) == []

    assert event.status is EditStatus.FAILED
    assert event.error is not None
    assert event.error.code is ErrorCode.OUTPUT_MODERATED
    assert event.attempt == 1
    assert event.cost.usd == 0
    assert event.gpu_ms > 0
    assert output_objects(store, settings) == {}


async def test_a_flagged_input_costs_no_gpu_work_and_a_clean_request_passes(
    make_settings: Callable[..., Settings], tiny_editor: Editor
) -> None:
    settings = make_settings()
    store = await prepare(settings)
    image = stage_image(store, settings, "a.png", png_bytes(64, 64))
    strict = request(settings, image, moderation={"threshold": 0.0})
    clean = request(settings, image)

    async with running_worker(settings, lambda: tiny_editor):
        await publish(settings, strict)
        await publish(settings, clean)
        events = by_request(await results(settings, count=2))

    (flagged,) = events[strict.request_id]
    assert flagged.error is not None
    assert flagged.error.code is ErrorCode.INPUT_MODERATED
    assert flagged.gpu_ms == 0
    (passed,) = events[clean.request_id]
    assert passed.status is EditStatus.SUCCEEDED
    assert passed.moderation is not None
    assert passed.moderation.output is not None
    assert list(output_objects(store, settings)) == [f"edits/{clean.request_id}.png"]


async def test_a_classifier_that_cannot_load_stops_start_up_with_one_line(
    make_settings: Callable[..., Settings], tiny_editor: Editor, tmp_path: Path
) -> None:
    settings = make_settings(moderation={"model": str(tmp_path / "nowhere")})
    worker = build_worker(settings, editor_factory=lambda: tiny_editor)
    with pytest.raises(ModelLoadError) as caught:
        await worker.run(asyncio.Event())
    message = str(caught.value)
    assert "\n" not in message
    assert "KLEIN_EDIT_MODERATION__MODEL" in message
    assert "fetch-model" in message
