"""Real photos in, faithful colours out: end to end on a real broker and S3 server with the tiny model.

The tiny model's output is a fixed function of its input pixels, prompt, seed and size, so "twin"
requests tell what the model received: a request whose base image is a plain sRGB PNG holding exactly
the pixels a correct decoder must produce gives a byte-identical object, and one holding other pixels
does not. Every object is also checked against its result event: size, ICC profile and alpha.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from consumer.settings import Settings
from pipeline import Editor
from schemas.errors import ErrorCode
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
from tests.inputs import display_p3_profile, encode, exif_orientation, to_srgb

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

RECOLOR = [{"target": "the disc", "color": "#1E90FF"}]


def gradient(width: int, height: int) -> Image.Image:
    yy, xx = np.mgrid[0:height, 0:width]
    pixels = np.stack([xx * 255 // (width - 1), yy * 255 // (height - 1), (xx * yy) % 256], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def cut_out(width: int, height: int) -> Image.Image:
    """A product cut-out: a coloured disc on a fully transparent field whose hidden colour is black."""
    yy, xx = np.mgrid[0:height, 0:width]
    inside = (xx - width / 2) ** 2 + (yy - height / 2) ** 2 < (min(width, height) / 3) ** 2
    pixels = np.zeros((height, width, 4), dtype=np.uint8)
    pixels[inside] = (200, 60, 40, 255)
    edge = ((xx - width / 2) ** 2 + (yy - height / 2) ** 2 < (min(width, height) / 3 + 3) ** 2) & ~inside
    pixels[edge] = (200, 60, 40, 128)  # a soft edge, as matting tools leave
    return Image.fromarray(pixels, "RGBA")


def png(image: Image.Image) -> bytes:
    """A plain PNG of the pixels alone: no ICC profile or other metadata carried over from a source."""
    return encode(Image.frombytes(image.mode, image.size, image.tobytes()), "PNG")


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
    key = event.output.uri.split("/", 3)[3]
    data = output_objects(store, settings)[key]
    assert len(data) == event.output.bytes
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.size == (event.output.width, event.output.height)
    assert image.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[event.output.format.value]
    assert ("A" in image.getbands()) is event.output.alpha
    icc = image.info.get("icc_profile")
    assert icc, "every output embeds an ICC profile"
    profile = ImageCms.ImageCmsProfile(io.BytesIO(icc)).profile
    assert event.output.color_profile == "sRGB"
    assert "sRGB" in profile.profile_description
    assert profile.xcolor_space.strip() == "RGB"
    return data, image


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


async def test_rgba_cut_out_recolour_stays_a_cut_out(
    make_settings: Callable[..., Settings], tiny_editor: Editor
) -> None:
    settings = make_settings()
    store = await prepare(settings)
    cut = cut_out(128, 96)
    base = stage_image(store, settings, "cut-outs/disc.png", png(cut))
    white = Image.new("RGB", cut.size, (255, 255, 255))
    white.paste(cut.convert("RGB"), mask=cut.getchannel("A"))
    recolour = same_edit(settings, base, recolor=RECOLOR)  # output.alpha: auto
    twin = same_edit(settings, stage_image(store, settings, "flat.png", png(white)), recolor=RECOLOR)
    as_webp = same_edit(settings, base, recolor=RECOLOR, output={"format": "webp"})
    free_prompt = same_edit(settings, base, prompt="put the disc on a beach")  # auto -> flatten
    flatten = same_edit(settings, base, recolor=RECOLOR, output={"alpha": "flatten"})
    on_black = same_edit(settings, base, recolor=RECOLOR, output={"background": "#000000"})

    async with running_worker(settings, lambda: tiny_editor):
        batch = [recolour, twin, as_webp, free_prompt, flatten, on_black]
        for req in batch:
            await publish(settings, req)
        await results(settings, count=len(batch), timeout_s=180)
        await publish(settings, recolour)  # a redelivery is answered from the stored object
        grouped = by_request(await results(settings, count=len(batch) + 1, timeout_s=60))
    events = {req.request_id: grouped[req.request_id][0] for req in batch}
    first, again = grouped[recolour.request_id]
    assert again.output == first.output  # alpha and colour_profile too, read back from the object
    assert again.params == first.params

    data, image = stored(store, settings, events[recolour.request_id])
    event = events[recolour.request_id]
    assert event.output is not None
    assert event.params is not None
    assert event.output.alpha is True
    assert event.params.alpha == "keep"
    assert image.mode == "RGBA"
    expected_alpha = cut.getchannel("A")
    if image.size != cut.size:
        expected_alpha = expected_alpha.resize(image.size, Image.Resampling.LANCZOS)
    assert image.getchannel("A").tobytes() == expected_alpha.tobytes()
    # The colour channels are exactly the edit of the white-flattened twin.
    twin_data, twin_image = stored(store, settings, events[twin.request_id])
    assert twin_image.mode == "RGB"
    assert image.convert("RGB").tobytes() == twin_image.tobytes()
    assert data != twin_data

    _, webp = stored(store, settings, events[as_webp.request_id])
    assert webp.mode == "RGBA"
    for opaque in (free_prompt, flatten):
        _, flat = stored(store, settings, events[opaque.request_id])
        assert flat.mode == "RGB"
        assert events[opaque.request_id].params.alpha == "flatten"  # type: ignore[union-attr]
    _, black = stored(store, settings, events[on_black.request_id])
    assert events[on_black.request_id].params.background == "#000000"  # type: ignore[union-attr]
    assert (
        black.convert("RGB").tobytes() != image.convert("RGB").tobytes()
    )  # another background, another input


async def test_heic_phone_photo_comes_out_upright_and_tiff_is_refused_by_name(
    make_settings: Callable[..., Settings], tiny_editor: Editor
) -> None:
    settings = make_settings()
    store = await prepare(settings)
    # Stored landscape, shown portrait: what a phone held upright writes.
    heic = encode(gradient(128, 96), "HEIF", quality=90, exif=exif_orientation(6))
    with Image.open(io.BytesIO(heic)) as plain:
        upright = ImageOps.exif_transpose(plain).convert("RGB")
    assert upright.size == (96, 128)
    phone = same_edit(settings, stage_image(store, settings, "IMG_0001.HEIC", heic))
    twin = same_edit(settings, stage_image(store, settings, "upright.png", png(upright)))
    deep = np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 7 % 256
    sixteen = same_edit(
        settings,
        stage_image(store, settings, "deep.png", png(Image.fromarray((deep * 257).astype(np.uint16)))),
    )
    eight = same_edit(
        settings, stage_image(store, settings, "eight.png", png(Image.fromarray(deep.astype(np.uint8))))
    )

    tiff = request(settings, stage_image(store, settings, "scan.tif", encode(gradient(64, 64), "TIFF")))

    events = await run(settings, tiny_editor, [phone, twin, sixteen, eight, tiff])

    refused = events[tiff.request_id]
    assert refused.status is EditStatus.FAILED
    assert refused.error is not None
    assert refused.error.code is ErrorCode.INVALID_IMAGE
    assert "format TIFF is not allowed" in refused.error.message

    # Pixels, not files: each file's XMP names its own request.
    _, image = stored(store, settings, events[phone.request_id])
    assert image.height > image.width  # portrait, as the phone showed it
    _, twin_image = stored(store, settings, events[twin.request_id])
    assert image.tobytes() == twin_image.tobytes()
    _, sixteen_image = stored(store, settings, events[sixteen.request_id])
    _, eight_image = stored(store, settings, events[eight.request_id])
    assert sixteen_image.tobytes() == eight_image.tobytes()  # 16-bit scaled to 8 bits, not clipped
