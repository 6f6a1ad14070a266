"""The model's own geometry and limits, through a worker with the tiny model (loaded as a GPU node loads).

Awkward input sizes give outputs that keep the aspect ratio within one 16-px step, with the event's size
equal to the object's; an over-area request and an over-long prompt fail before any GPU work, cost 0,
naming the limit.
"""

from __future__ import annotations

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
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

AWKWARD = {(130, 79): (128, 80), (79, 170): (80, 176), (203, 97): (208, 96)}


async def test_awkward_sizes_keep_their_aspect_and_the_event_matches_the_object(
    make_settings: Callable[..., Settings], tiny_editor: Editor
) -> None:
    settings = make_settings()
    store = await prepare(settings)
    requests = [
        request(settings, stage_image(store, settings, f"awkward/{w}x{h}.png", png_bytes(w, h)), seed=3)
        for w, h in AWKWARD
    ]

    async with running_worker(settings, lambda: tiny_editor):
        for req in requests:
            await publish(settings, req)
        events = await results(settings, count=len(requests), timeout_s=150)

    objects = output_objects(store, settings)
    for event in events:
        assert event.status is EditStatus.SUCCEEDED, event.error
        assert event.output is not None
        assert event.params is not None
        data = objects[event.output.uri.split("/", 3)[3]]
        assert Image.open(io.BytesIO(data)).size == (event.output.width, event.output.height)
        assert (event.params.width, event.params.height) == (event.output.width, event.output.height)
    sizes = sorted((e.output.width, e.output.height) for e in events if e.output is not None)
    assert sizes == sorted(AWKWARD.values())
