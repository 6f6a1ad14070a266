"""Real photos in, faithful colours out: end to end on a real broker and S3 server with the tiny model.
The other real-input rules (cut-outs, HEIC, 16-bit, refused formats) run on the record path:
tests/consumer/record_path/test_real_inputs.py.

The tiny model's output is a fixed function of its input pixels, prompt, seed and size, so "twin"
requests tell what the model received: a request whose base image is a plain sRGB PNG holding exactly
the pixels a correct decoder must produce gives a byte-identical object, and one holding other pixels
does not. Every object is also checked against its result event: size, ICC profile and alpha.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from PIL import Image

from consumer.settings import Settings
from pipeline import Editor
from schemas.requests import EditRequest
from schemas.results import EditCompleted, EditStatus
from storage import ImageStore
from tests.consumer.harness import (
    by_request,
    output_objects,
    prepare,
    publish,
    request,
    results,
    running_worker,
    stage_image,
)
from tests.inputs import check_stored, display_p3_profile, encode, gradient, to_srgb
from tests.inputs import plain_png as png

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


async def run(settings: Settings, editor: Editor, requests: list[EditRequest]) -> dict[str, EditCompleted]:
    async with running_worker(settings, lambda: editor):
        for req in requests:
            await publish(settings, req)
        events = await results(settings, count=len(requests), timeout_s=180)
    grouped = by_request(events)
    return {req.request_id: grouped[req.request_id][0] for req in requests}


def stored(store: ImageStore, settings: Settings, event: EditCompleted) -> tuple[bytes, Image.Image]:
    """The object of a succeeded event, checked against it (size, format, profile, alpha, digest)."""
    assert event.status is EditStatus.SUCCEEDED, event.error
    assert event.output is not None
    data = output_objects(store, settings)[event.output.uri.split("/", 3)[3]]
    return data, check_stored(data, event.output)


def same_edit(settings: Settings, image: str, **fields: Any) -> EditRequest:
    return request(settings, image, seed=11, **fields)


async def test_p3_jpeg_is_edited_as_its_srgb_twin(
    make_settings: Callable[..., Settings], tiny_editor: Editor
) -> None:
    settings = make_settings()
    store = await prepare(settings)
    jpeg = encode(gradient(128, 96), "JPEG", quality=92, icc_profile=display_p3_profile())
    with Image.open(io.BytesIO(jpeg)) as plain:
        device = plain.convert("RGB")  # the values stored in the file, read as if they were sRGB
    twin = to_srgb(device, display_p3_profile())  # what a colour-managed decoder must hand the model
    p3 = same_edit(settings, stage_image(store, settings, "shots/p3 photo.jpg", jpeg))
    srgb_twin = same_edit(settings, stage_image(store, settings, "twin.png", png(twin)))
    unmanaged = same_edit(settings, stage_image(store, settings, "raw.png", png(device)))
    as_jpeg = same_edit(settings, p3.image, output={"format": "jpeg"})

    events = await run(settings, tiny_editor, [p3, srgb_twin, unmanaged, as_jpeg])

    # Pixels, not files: each file's XMP names its own request.
    _, p3_image = stored(store, settings, events[p3.request_id])
    _, twin_image = stored(store, settings, events[srgb_twin.request_id])
    _, raw_image = stored(store, settings, events[unmanaged.request_id])
    assert p3_image.tobytes() == twin_image.tobytes()  # the model received the converted pixels ...
    assert p3_image.tobytes() != raw_image.tobytes()  # ... and not the file's values read as sRGB
    assert p3_image.mode == "RGB"
    event = events[p3.request_id]
    assert event.output is not None
    assert event.output.alpha is False
    assert event.params is not None
    assert event.params.alpha == "flatten"
    assert event.params.background == "#FFFFFF"
    _, jpeg_image = stored(store, settings, events[as_jpeg.request_id])  # JPEG: APP2 profile
    assert jpeg_image.mode == "RGB"
