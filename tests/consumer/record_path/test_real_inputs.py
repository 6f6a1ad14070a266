"""Real photos in, faithful colours out, on the production record path with the tiny model.

The tiny model's output is a fixed function of its input pixels, prompt, seed and size, so "twin"
requests tell what the model received: a request whose base image is a plain sRGB PNG holding exactly
the pixels a correct decoder must produce gives the same pixels out, and one holding other pixels does
not. Every object is also checked against its result event: size, ICC profile and alpha. (The Display P3
case keeps its end-to-end test on the broker: tests/consumer/test_real_inputs.py.)
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps

from schemas.errors import ErrorCode
from schemas.requests import EditRequest
from schemas.results import EditCompleted, EditStatus
from tests.consumer.record_path.path import RecordPath
from tests.inputs import check_stored, cut_out, encode, exif_orientation, gradient, plain_png

pytestmark = pytest.mark.timeout(120)

RECOLOR = [{"target": "the disc", "color": "#1E90FF"}]


def same_edit(path: RecordPath, image: str, **fields: Any) -> EditRequest:
    return path.request(image, seed=11, **fields)


async def run(path: RecordPath, requests: list[EditRequest]) -> dict[str, EditCompleted]:
    for req in requests:
        assert await path.handle(req)
    return {event.request_id: event for event in path.results()}


def stored(path: RecordPath, event: EditCompleted) -> tuple[bytes, Image.Image]:
    assert event.status is EditStatus.SUCCEEDED, event.error
    assert event.output is not None
    data = path.store.read(event.output.uri)
    return data, check_stored(data, event.output)


async def test_rgba_cut_out_recolour_stays_a_cut_out(path: RecordPath) -> None:
    cut = cut_out(128, 96)
    base = path.stage("cut-outs/disc.png", plain_png(cut))
    white = Image.new("RGB", cut.size, (255, 255, 255))
    white.paste(cut.convert("RGB"), mask=cut.getchannel("A"))
    recolour = same_edit(path, base, recolor=RECOLOR)  # output.alpha: auto
    twin = same_edit(path, path.stage("flat.png", plain_png(white)), recolor=RECOLOR)
    as_webp = same_edit(path, base, recolor=RECOLOR, output={"format": "webp"})
    free_prompt = same_edit(path, base, prompt="put the disc on a beach")  # auto -> flatten
    flatten = same_edit(path, base, recolor=RECOLOR, output={"alpha": "flatten"})
    on_black = same_edit(path, base, recolor=RECOLOR, output={"background": "#000000"})

    events = await run(path, [recolour, twin, as_webp, free_prompt, flatten, on_black])
    assert await path.handle(recolour)  # a redelivery is answered from the stored object
    again = path.results()[-1]
    first = events[recolour.request_id]
    assert again.output == first.output  # alpha and colour_profile too, read back from the object
    assert again.params == first.params

    data, image = stored(path, first)
    assert first.output is not None
    assert first.params is not None
    assert first.output.alpha is True
    assert first.params.alpha == "keep"
    assert image.mode == "RGBA"
    expected_alpha = cut.getchannel("A")
    if image.size != cut.size:
        expected_alpha = expected_alpha.resize(image.size, Image.Resampling.LANCZOS)
    assert image.getchannel("A").tobytes() == expected_alpha.tobytes()
    # The colour channels are exactly the edit of the white-flattened twin.
    twin_data, twin_image = stored(path, events[twin.request_id])
    assert twin_image.mode == "RGB"
    assert image.convert("RGB").tobytes() == twin_image.tobytes()
    assert data != twin_data

    _, webp = stored(path, events[as_webp.request_id])
    assert webp.mode == "RGBA"
    for opaque in (free_prompt, flatten):
        _, flat = stored(path, events[opaque.request_id])
        assert flat.mode == "RGB"
        assert events[opaque.request_id].params.alpha == "flatten"  # type: ignore[union-attr]
    _, black = stored(path, events[on_black.request_id])
    assert events[on_black.request_id].params.background == "#000000"  # type: ignore[union-attr]
    # Another background is another input, so another output.
    assert black.convert("RGB").tobytes() != image.convert("RGB").tobytes()


async def test_heic_phone_photo_comes_out_upright_and_tiff_is_refused_by_name(path: RecordPath) -> None:
    # Stored landscape, shown portrait: what a phone held upright writes.
    heic = encode(gradient(128, 96), "HEIF", quality=90, exif=exif_orientation(6))
    with Image.open(io.BytesIO(heic)) as plain:
        upright = ImageOps.exif_transpose(plain).convert("RGB")
    assert upright.size == (96, 128)
    phone = same_edit(path, path.stage("IMG_0001.HEIC", heic))
    twin = same_edit(path, path.stage("upright.png", plain_png(upright)))
    deep = np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 7 % 256
    sixteen = same_edit(
        path, path.stage("deep.png", plain_png(Image.fromarray((deep * 257).astype(np.uint16))))
    )
    eight = same_edit(path, path.stage("eight.png", plain_png(Image.fromarray(deep.astype(np.uint8)))))
    tiff = path.request(path.stage("scan.tif", encode(gradient(64, 64), "TIFF")))

    events = await run(path, [phone, twin, sixteen, eight, tiff])

    refused = events[tiff.request_id]
    assert refused.status is EditStatus.FAILED
    assert refused.error is not None
    assert refused.error.code is ErrorCode.INVALID_IMAGE
    assert "format TIFF is not allowed" in refused.error.message
    assert path.dead_letters() == []  # a bad image is answered, not dead-lettered

    _, image = stored(path, events[phone.request_id])
    assert image.height > image.width  # portrait, as the phone showed it
    _, twin_image = stored(path, events[twin.request_id])
    assert image.tobytes() == twin_image.tobytes()
    _, sixteen_image = stored(path, events[sixteen.request_id])
    _, eight_image = stored(path, events[eight.request_id])
    assert sixteen_image.tobytes() == eight_image.tobytes()  # 16-bit scaled to 8 bits, not clipped
