"""Decoding rules, encoding round-trips and output-size resolution."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from io import BytesIO

import pytest
from PIL import Image

from pipeline.errors import ImageTooLarge, InvalidImage
from pipeline.images import (
    check_edit_input,
    decode_image,
    encode_image,
    megapixels,
    plan_geometry,
)
from schemas.errors import ErrorCode
from schemas.requests import OutputFormat

ALLOWED = ["PNG", "JPEG", "WEBP"]
CAP = 40_000_000
ImageFactory = Callable[..., Image.Image]


def _bytes(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG declaring width x height with a few bytes of pixel data: the shape of a decompression bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def decode(data: bytes, *, max_pixels: int = CAP, formats: list[str] | None = None) -> Image.Image:
    """The pixels the model gets."""
    decoded = decode_image(data, max_pixels=max_pixels, formats=formats or ALLOWED, name="references[1]")
    return decoded.image


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_decodes_allowed_formats_to_rgb(make_image: ImageFactory, fmt: str) -> None:
    image = decode(_bytes(make_image(80, 48), fmt))
    assert image.mode == "RGB"
    assert image.size == (80, 48)


def test_allow_list_is_case_insensitive_and_knows_jpg(make_image: ImageFactory) -> None:
    assert decode(_bytes(make_image(16, 16), "PNG"), formats=["png"]).size == (16, 16)
    assert decode(_bytes(make_image(16, 16), "JPEG"), formats=["jpg"]).size == (16, 16)


def test_unknown_allow_list_entry_is_a_configuration_error(make_image: ImageFactory) -> None:
    with pytest.raises(ValueError, match="unknown image format"):
        decode(_bytes(make_image(16, 16), "PNG"), formats=["PNG", "HEIC2"])


def test_not_an_image_is_invalid() -> None:
    with pytest.raises(InvalidImage, match=r"references\[1\]") as info:
        decode(b"this is certainly not an image")
    assert info.value.code is ErrorCode.INVALID_IMAGE
    assert not info.value.retryable


def test_empty_input_is_invalid() -> None:
    with pytest.raises(InvalidImage, match="empty"):
        decode(b"")


def test_truncated_png_is_invalid(make_image: ImageFactory) -> None:
    data = _bytes(make_image(64, 64), "PNG")
    with pytest.raises(InvalidImage, match=r"references\[1\]: cannot decode PNG"):
        decode(data[: len(data) // 2])


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_format_outside_allow_list_is_invalid_and_named(make_image: ImageFactory, fmt: str) -> None:
    with pytest.raises(InvalidImage, match=f"format {fmt} is not allowed"):
        decode(_bytes(make_image(32, 32), fmt))


def test_jpeg_rejected_when_only_png_allowed(make_image: ImageFactory) -> None:
    with pytest.raises(InvalidImage, match="JPEG is not allowed"):
        decode(_bytes(make_image(32, 32), "JPEG"), formats=["PNG"])


def test_decompression_bomb_is_too_large_without_decoding() -> None:
    # 400 Mpx: past Pillow's own error threshold.
    with pytest.raises(ImageTooLarge) as info:
        decode(_png_header_only(20_000, 20_000))
    assert info.value.code is ErrorCode.INPUT_TOO_LARGE


def test_pillow_bomb_warning_is_an_error_too() -> None:
    # 100 Mpx: Pillow would only warn; even a generous cap of ours must not let it be decoded.
    with pytest.raises(ImageTooLarge, match="too many pixels"):
        decode(_png_header_only(10_000, 10_000), max_pixels=10**9)


def test_own_cap_checked_before_pixels_are_decoded() -> None:
    # 81 Mpx is under Pillow's threshold; the pixel data is missing, so decoding would fail as
    # truncated: getting ImageTooLarge proves the cap was applied to the header alone.
    with pytest.raises(ImageTooLarge, match="9000x9000 = 81000000 pixels exceeds the limit of 40000000"):
        decode(_png_header_only(9_000, 9_000))


def test_cap_is_inclusive(make_image: ImageFactory) -> None:
    data = _bytes(make_image(20, 10), "PNG")
    assert decode(data, max_pixels=200).size == (20, 10)
    with pytest.raises(ImageTooLarge):
        decode(data, max_pixels=199)


def test_exif_orientation_is_applied(make_image: ImageFactory) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = _bytes(make_image(40, 20), "JPEG", exif=exif.tobytes())
    assert decode(data).size == (20, 40)


def test_rgba_and_palette_become_rgb() -> None:
    rgba = Image.new("RGBA", (8, 8), (10, 20, 30, 255))
    decoded = decode(_bytes(rgba, "PNG"))
    assert decoded.mode == "RGB"
    assert decoded.getpixel((0, 0)) == (10, 20, 30)
    palette = Image.new("P", (8, 8), 3)
    assert decode(_bytes(palette, "PNG")).mode == "RGB"
    assert decode(_bytes(Image.new("L", (8, 8), 7), "PNG")).getpixel((1, 1)) == (7, 7, 7)


@pytest.mark.parametrize(
    ("size", "message"),
    [((63, 128), "too small"), ((64, 600), "aspect ratio"), ((600, 64), "aspect ratio")],
)
def test_model_input_limits(size: tuple[int, int], message: str) -> None:
    with pytest.raises(InvalidImage, match=message):
        check_edit_input(Image.new("RGB", size), "image")


def test_model_input_limits_accept_edges() -> None:
    check_edit_input(Image.new("RGB", (64, 512)), "image")


@pytest.mark.parametrize("fmt", list(OutputFormat))
def test_encode_round_trips_and_is_deterministic(make_image: ImageFactory, fmt: OutputFormat) -> None:
    image = make_image(64, 48, seed=3)
    data = encode_image(image, fmt)
    assert data == encode_image(image.copy(), fmt)
    decoded = decode_image(data, max_pixels=CAP, formats=[fmt.value], name="out").image
    assert decoded.size == (64, 48)
    if fmt is OutputFormat.PNG:
        assert decoded.tobytes() == image.tobytes()


def test_encode_drops_source_metadata(make_image: ImageFactory) -> None:
    image = make_image(16, 16)
    tagged = image.copy()
    tagged.info["icc_profile"] = b"not-really-a-profile"
    assert encode_image(tagged, OutputFormat.PNG) == encode_image(image, OutputFormat.PNG)


def test_encode_converts_non_rgb() -> None:
    data = encode_image(Image.new("RGBA", (8, 8), (1, 2, 3, 4)), OutputFormat.JPEG)
    assert Image.open(BytesIO(data)).mode == "RGB"


@pytest.mark.parametrize(
    ("base", "requested", "cap", "expected"),
    [
        ((1024, 1024), (512, 768), 1.05, (512, 768)),  # requested wins, even above the cap
        ((1000, 750), None, 1.05, (1008, 752)),  # under the cap: only rounded to the nearest /16
        ((130, 79), None, 1.05, (128, 80)),  # rounded, not floored: aspect 1.60 for 1.65 (floor: 2.00)
        ((1024, 1024), None, 1.05, (1024, 1024)),
        ((4000, 3000), None, 1.05, (1184, 880)),  # scaled down keeping 4:3
        ((3000, 4000), None, 1.05, (880, 1184)),
        ((2048, 1024), None, 0.5, (1008, 496)),
        ((50, 40), None, 1.05, (64, 64)),  # never under 64 per side
        ((8000, 1000), None, 1.0, (2816, 352)),  # 2832x352 would break the 8:1 limit
    ],
)
def test_planned_output_size(
    base: tuple[int, int], requested: tuple[int, int] | None, cap: float, expected: tuple[int, int]
) -> None:
    width, height = plan_geometry([base], requested, cap).output
    assert (width, height) == expected
    if requested is None and base[0] >= 64 and base[1] >= 64:
        assert width * height <= cap * 1e6
        assert width % 16 == 0
        assert height % 16 == 0


def test_megapixels() -> None:
    assert megapixels(Image.new("RGB", (1000, 500))) == pytest.approx(0.5)


def test_a_large_jpeg_is_decoded_with_draft_to_what_the_model_needs() -> None:
    """A 12 MP JPEG with `draft_pixels` of 1 MP decodes at a DCT-scaled size still holding 1 MP; without
    it, or for a PNG, at full size. Host memory follows the decoded size (docs/operations.md)."""
    import io as _io

    from PIL import Image as _Image

    from pipeline import decode_image as _decode

    buf = _io.BytesIO()
    _Image.new("RGB", (4000, 3000), (30, 144, 255)).save(buf, format="JPEG")
    drafted = _decode(
        buf.getvalue(), max_pixels=50_000_000, formats=["JPEG"], name="image", draft_pixels=1_000_000
    )
    width, height = drafted.image.size
    assert 1_000_000 <= width * height <= 4 * 1_000_000  # the smallest DCT scale still holding 1 MP
    full = _decode(buf.getvalue(), max_pixels=50_000_000, formats=["JPEG"], name="image")
    assert full.image.size == (4000, 3000)
    assert abs(int(drafted.image.getpixel((10, 10))[2]) - 255) <= 2  # colours survive the scaled decode
