"""Decoding what real users send: colour profiles, transparency, deep images, HEIC/AVIF, orientation.

Every input kind is built here in code (profiles in tests/inputs.py) and the assertion is on the pixels
handed to the editor (`DecodedImage.image`), never through the random model.
"""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pillow_heif
import pytest
from PIL import Image, ImageCms

from pipeline.errors import InvalidImage
from pipeline.images import SRGB_PROFILE, DecodedImage, decode_image, encode_image, keeps_alpha
from schemas.requests import OutputAlpha, OutputFormat
from tests.inputs import (
    SRGB_PRIMARIES,
    adobe_rgb_profile,
    cmyk_profile,
    display_p3_profile,
    encode,
    exif_orientation,
    grey_profile,
    matrix_profile,
    png16,
    srgb_iec_profile,
    srgb_profile,
    to_srgb,
)

FORMATS = ["PNG", "JPEG", "WEBP", "HEIF", "AVIF"]
RED = (200, 60, 40)


def decode(data: bytes, *, formats: list[str] | None = None, **options: object) -> DecodedImage:
    return decode_image(data, max_pixels=40_000_000, formats=formats or FORMATS, name="image", **options)  # type: ignore[arg-type]


def pixel(image: Image.Image, xy: tuple[int, int] = (8, 8)) -> tuple[int, ...]:
    value = image.getpixel(xy)
    assert isinstance(value, tuple)
    return value


def close(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def gradient(width: int = 64, height: int = 64) -> Image.Image:
    yy, xx = np.mgrid[0:height, 0:width]
    pixels = np.stack([xx * 255 // (width - 1), yy * 255 // (height - 1), (xx + yy) % 256], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


# -- colour management -------------------------------------------------------------------------------------


def test_display_p3_jpeg_is_converted_to_srgb() -> None:
    data = encode(Image.new("RGB", (64, 64), RED), "JPEG", quality=95, icc_profile=display_p3_profile())
    decoded = decode(data)
    assert decoded.image.mode == "RGB"
    assert close(pixel(decoded.image), (217, 42, 23), 2), pixel(decoded.image)
    assert decoded.profile == "Display P3"
    # Exactly what LittleCMS makes of the JPEG's own pixels.
    with Image.open(BytesIO(data)) as plain:
        assert decoded.image.tobytes() == to_srgb(plain.convert("RGB"), display_p3_profile()).tobytes()


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "HEIF", "AVIF", "JPEG"])
@pytest.mark.parametrize("profile", [display_p3_profile, adobe_rgb_profile], ids=["p3", "adobe-rgb"])
def test_wide_gamut_profiles_are_converted_in_every_format(fmt: str, profile: object) -> None:
    icc = profile()  # type: ignore[operator]
    source = gradient()
    lossless = {"WEBP": {"lossless": True}, "AVIF": {"quality": 100}, "HEIF": {"quality": -1}}
    data = encode(source, fmt, icc_profile=icc, **lossless.get(fmt, {}))
    decoded = decode(data)
    with Image.open(BytesIO(data)) as plain:
        stored = plain.convert("RGB")  # the device values as stored (lossy formats change them a little)
        assert plain.info.get("icc_profile") == icc
    assert decoded.image.tobytes() == to_srgb(stored, icc).tobytes()
    if fmt in ("PNG", "WEBP"):
        assert decoded.image.tobytes() != source.tobytes()  # it really was converted


def test_adobe_rgb_moves_saturated_colours_a_lot() -> None:
    decoded = decode(
        encode(Image.new("RGB", (64, 64), (30, 200, 60)), "PNG", icc_profile=adobe_rgb_profile())
    )
    value = pixel(decoded.image)
    assert max(abs(a - b) for a, b in zip(value, (30, 200, 60), strict=True)) > 20, value


def every_value() -> Image.Image:
    """256 x 256 pixels covering every 8-bit value in each channel, in many combinations."""
    yy, xx = np.mgrid[0:256, 0:256]
    return Image.fromarray(np.stack([xx, yy, (xx * 7 + yy * 13) % 256], axis=-1).astype(np.uint8), "RGB")


@pytest.mark.parametrize(
    "icc",
    [srgb_profile(), SRGB_PROFILE, srgb_iec_profile(), matrix_profile("sRGB", SRGB_PRIMARIES)],
    ids=["lcms-srgb", "our-output-srgb", "iec61966-2.1-table", "srgb-parametric"],
)
def test_srgb_tagged_input_gives_exactly_its_untagged_pixels(icc: bytes) -> None:
    # A transform between two sRGB profiles still moves some values by 1 (fixed-point colorants);
    # those would make a tagged photo and its untagged twin different inputs for the model.
    source = every_value()
    decoded = decode(encode(source, "PNG", icc_profile=icc))
    assert decoded.image.tobytes() == source.tobytes()
    assert decoded.profile is not None


def test_untagged_input_is_taken_as_srgb() -> None:
    source = every_value()
    decoded = decode(encode(source, "PNG"))
    assert decoded.image.tobytes() == source.tobytes()
    assert decoded.profile is None


def test_srgb_grey_profile_is_identity() -> None:
    ramp = Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (64, 1)), "L")
    decoded = decode(encode(ramp, "PNG", icc_profile=grey_profile(None)))
    assert decoded.image.tobytes() == ramp.convert("RGB").tobytes()


def test_cmyk_jpeg_with_an_embedded_profile_goes_through_it() -> None:
    # LittleCMS cannot create a CMYK profile, so tests/inputs.py writes one (a lut16 A2B0 table).
    icc = cmyk_profile()
    cmyk = Image.new("CMYK", (64, 64), (128, 64, 32, 20))
    data = encode(cmyk, "JPEG", quality=95, icc_profile=icc)
    decoded = decode(data)
    with Image.open(BytesIO(data)) as plain:
        assert plain.mode == "CMYK"
        expected = to_srgb(plain.copy(), icc)
        naive = plain.convert("RGB")
    assert decoded.image.tobytes() == expected.tobytes()
    assert not close(pixel(decoded.image), pixel(naive), 10), (pixel(decoded.image), pixel(naive))
    assert decoded.profile == "Toy press CMYK"


def test_cmyk_jpeg_without_a_profile_uses_the_standard_conversion() -> None:
    cmyk = Image.new("CMYK", (64, 64), (0, 255, 255, 0))
    data = encode(cmyk, "JPEG", quality=95)
    with Image.open(BytesIO(data)) as plain:
        expected = plain.convert("RGB")
    decoded = decode(data)
    assert decoded.image.tobytes() == expected.tobytes()
    assert close(pixel(decoded.image), (255, 0, 0), 3)


def test_grey_profile_is_applied() -> None:
    # 128 in linear light is 188 in sRGB.
    decoded = decode(encode(Image.new("L", (64, 64), 128), "PNG", icc_profile=grey_profile(1.0)))
    assert pixel(decoded.image) == (188, 188, 188)
    assert (
        decode(encode(Image.new("L", (64, 64), 128), "JPEG", icc_profile=grey_profile(1.0))).image.mode
        == "RGB"
    )


def test_grey_jpeg_with_an_rgb_profile_is_converted_as_rgb() -> None:
    decoded = decode(encode(Image.new("L", (64, 64), 128), "PNG", icc_profile=srgb_profile()))
    assert pixel(decoded.image) == (128, 128, 128)


def test_unusable_profile_is_ignored_as_browsers_do() -> None:
    source = gradient()
    garbage = decode(encode(source, "PNG", icc_profile=b"not a profile at all, just bytes" * 8))
    assert garbage.image.tobytes() == source.tobytes()
    assert garbage.profile is None
    # A CMYK profile on RGB pixels does not fit: ignored too.
    mismatched = decode(encode(source, "PNG", icc_profile=cmyk_profile()))
    assert mismatched.image.tobytes() == source.tobytes()
    # A well-formed profile LittleCMS cannot build a transform from (no colorants, no curves).
    tagless = display_p3_profile()
    tagless = tagless[:128] + (0).to_bytes(4, "big")
    tagless = len(tagless).to_bytes(4, "big") + tagless[4:]
    assert decode(encode(source, "PNG", icc_profile=tagless)).image.tobytes() == source.tobytes()


def test_palette_png_with_a_profile_is_converted() -> None:
    palette = Image.new("RGB", (64, 64), RED).convert("P", palette=Image.Palette.ADAPTIVE)
    decoded = decode(encode(palette, "PNG", icc_profile=display_p3_profile()))
    assert close(pixel(decoded.image), (217, 42, 23), 1)


# -- transparency -------------------------------------------------------------------------------------------


def test_fully_transparent_cut_out_becomes_the_background_not_black() -> None:
    data = encode(Image.new("RGBA", (64, 64), (0, 0, 0, 0)), "PNG")
    decoded = decode(data)
    assert pixel(decoded.image) == (255, 255, 255)
    assert decoded.alpha is not None
    assert decoded.alpha.mode == "L"
    assert decoded.alpha.getextrema() == (0, 0)
    assert pixel(decode(data, background=(0, 128, 255)).image) == (0, 128, 255)


def test_partial_alpha_is_composited() -> None:
    data = encode(Image.new("RGBA", (64, 64), (0, 0, 0, 128)), "PNG")
    value = pixel(decode(data).image)
    assert close(value, (127, 127, 127), 1), value
    expected = Image.alpha_composite(
        Image.new("RGBA", (64, 64), (255, 255, 255, 255)), Image.new("RGBA", (64, 64), (0, 0, 0, 128))
    ).convert("RGB")
    assert close(value, pixel(expected), 1)


def cut_out(size: tuple[int, int] = (96, 64)) -> Image.Image:
    """A red disc on a transparent field, its hidden colour black: a product cut-out."""
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    inside = (xx - size[0] / 2) ** 2 + (yy - size[1] / 2) ** 2 < (min(size) / 3) ** 2
    pixels = np.zeros((size[1], size[0], 4), dtype=np.uint8)
    pixels[inside] = (*RED, 255)
    image = Image.fromarray(pixels, "RGBA")
    return image


def flattened(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    base = Image.new("RGB", image.size, background)
    base.paste(image.convert("RGB"), mask=image.getchannel("A"))
    return base


@pytest.mark.parametrize(
    ("kind", "build"),
    [
        ("rgba-png", lambda im: encode(im, "PNG")),
        ("la-png", lambda im: encode(im.convert("LA"), "PNG")),
        ("palette-trns-png", lambda im: encode(im.convert("P"), "PNG")),
        ("rgba-webp", lambda im: encode(im, "WEBP", lossless=True)),
        ("rgba-heif", lambda im: encode(im, "HEIF", quality=-1)),
        ("rgba-avif", lambda im: encode(im, "AVIF", quality=100)),
    ],
)
def test_every_kind_of_transparency_is_flattened_onto_the_background(kind: str, build: object) -> None:
    image = cut_out()
    data = build(image)  # type: ignore[operator]
    decoded = decode(data)
    with Image.open(BytesIO(data)) as plain:
        stored = plain.convert("RGBA")  # what the file holds (grey for LA, rounded for lossy codecs)
    assert decoded.alpha is not None
    assert decoded.alpha.tobytes() == stored.getchannel("A").tobytes()
    assert decoded.image.tobytes() == flattened(stored).tobytes()
    assert pixel(decoded.image, (0, 0)) == (255, 255, 255)  # transparent corner: background, not black


def test_palette_with_a_transparent_index() -> None:
    palette = Image.new("P", (64, 64), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.paste(0, (0, 0, 32, 64))
    data = encode(palette, "PNG", transparency=0)
    decoded = decode(data, background=(1, 2, 3))
    assert pixel(decoded.image, (0, 0)) == (1, 2, 3)
    assert pixel(decoded.image, (40, 0)) == (10, 200, 30)


@pytest.mark.parametrize(
    ("mode", "color", "key"),
    [("RGB", (1, 2, 3), (1, 2, 3)), ("L", 9, 9), ("I;16", 2000, 2000)],
)
def test_trns_colour_key_is_transparency(mode: str, color: object, key: object) -> None:
    image = Image.new(mode, (64, 64), color)  # type: ignore[arg-type]
    decoded = decode(encode(image, "PNG", transparency=key))
    assert pixel(decoded.image) == (255, 255, 255)
    assert decoded.alpha is not None


def test_opaque_alpha_channel_is_no_transparency() -> None:
    decoded = decode(encode(Image.new("RGBA", (64, 64), (*RED, 255)), "PNG"))
    assert decoded.alpha is None
    assert pixel(decoded.image) == RED


def test_rgba_with_a_profile_is_converted_and_flattened() -> None:
    image = Image.new("RGBA", (64, 64), (*RED, 255))
    image.paste((0, 0, 0, 0), (0, 0, 32, 64))
    decoded = decode(encode(image, "PNG", icc_profile=display_p3_profile()))
    assert close(pixel(decoded.image, (40, 8)), (217, 42, 23), 1)
    assert pixel(decoded.image, (8, 8)) == (255, 255, 255)


def test_alpha_follows_the_exif_orientation() -> None:
    image = cut_out((96, 64))
    image.paste((*RED, 255), (0, 0, 8, 8))  # an opaque top-left corner marks the orientation
    decoded = decode(encode(image, "PNG", exif=exif_orientation(6)))
    assert decoded.image.size == (64, 96)
    assert decoded.alpha is not None
    assert decoded.alpha.size == (64, 96)
    # Orientation 6 turns the stored top-left into the displayed top-right.
    assert decoded.alpha.getpixel((63, 0)) == 255
    assert decoded.alpha.getpixel((0, 0)) == 0


# -- deep images --------------------------------------------------------------------------------------------


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    decoded = decode(encode(Image.new("I;16", (64, 64), 32896), "PNG"))
    assert pixel(decoded.image) == (128, 128, 128)
    assert pixel(decode(encode(Image.new("I;16", (64, 64), 65535), "PNG")).image) == (255, 255, 255)
    assert pixel(decode(encode(Image.new("I;16", (64, 64), 0), "PNG")).image) == (0, 0, 0)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_sixteen_bit_png_matches_its_eight_bit_twin(channels: int) -> None:
    rng = np.random.default_rng(channels)
    eight = rng.integers(0, 256, size=(64, 64, channels), dtype=np.uint16)
    if channels in (2, 4):
        eight[..., -1] = 255  # opaque: the twin check is about the colour samples
    deep = eight * 257  # the exact 16-bit equivalent of each 8-bit value
    decoded = decode(png16(deep))
    twin_mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
    twin = Image.fromarray(eight.astype(np.uint8).squeeze(), twin_mode).convert("RGB")
    assert decoded.image.tobytes() == twin.tobytes()


def test_sixty_four_bit_rgba_alpha_is_kept() -> None:
    samples = np.zeros((64, 64, 4), dtype=np.uint16)
    samples[:, 32:] = (51400, 15420, 10280, 65535)  # (200, 60, 40) opaque on the right half
    decoded = decode(png16(samples))
    assert decoded.alpha is not None
    assert pixel(decoded.image, (0, 0)) == (255, 255, 255)
    assert pixel(decoded.image, (40, 0)) == RED


@pytest.mark.parametrize(("value", "expected"), [(32896, 128), (65535, 255), (2**31 - 1, 255), (2**30, 128)])
def test_thirty_two_bit_integer_images_are_scaled(value: int, expected: int) -> None:
    # Only TIFF stores mode I in full; a 16-bit-sized value is read on the 16-bit scale.
    data = encode(Image.new("I", (64, 64), value), "TIFF")
    assert pixel(decode(data, formats=["TIFF"]).image) == (expected,) * 3


# -- HEIC, AVIF and the other formats platforms receive -----------------------------------------------------


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_heic_and_avif_decode_upright(fmt: str) -> None:
    landscape = gradient(96, 64)
    data = encode(landscape, fmt, quality=90, exif=exif_orientation(6))
    decoded = decode(data)
    assert decoded.format == fmt
    assert decoded.image.size == (64, 96)  # a phone photo held upright


def test_heic_is_accepted_as_an_alias() -> None:
    data = encode(gradient(), "HEIF")
    assert decode(data, formats=["heic"]).format == "HEIF"


@pytest.mark.parametrize(("fmt", "found"), [("HEIF", "HEIF"), ("AVIF", "AVIF"), ("TIFF", "TIFF")])
def test_a_refused_format_is_named(fmt: str, found: str) -> None:
    with pytest.raises(InvalidImage, match=f"format {found} is not allowed"):
        decode(encode(gradient(), fmt), formats=["PNG", "JPEG"])


@pytest.mark.parametrize(
    ("head", "found"),
    [
        (b"\xff\x0a\xfa\x7f\x01\x90\x08", "JPEG XL"),
        (b"\x00\x00\x00\x0cJXL \r\n\x87\n\x00\x00", "JPEG XL"),
        (b"%PDF-1.7\n", "PDF"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
    ],
)
def test_formats_pillow_cannot_open_are_named_too(head: bytes, found: str) -> None:
    with pytest.raises(InvalidImage, match=f"format {found} is not allowed"):
        decode(head + b"\0" * 64)


def test_heic_with_an_embedded_profile_and_orientation() -> None:
    data = encode(
        Image.new("RGB", (96, 64), RED),
        "HEIF",
        quality=-1,
        icc_profile=display_p3_profile(),
        exif=exif_orientation(6),
    )
    decoded = decode(data)
    assert decoded.image.size == (64, 96)
    assert close(pixel(decoded.image), (217, 42, 23), 3), pixel(decoded.image)


def test_pillow_heif_is_what_reads_heic() -> None:
    assert pillow_heif.is_supported(encode(gradient(), "HEIF"))


# -- what already worked keeps working ----------------------------------------------------------------------


def test_mpo_orientation_and_first_frame() -> None:
    first = Image.new("RGB", (96, 64), RED)
    second = Image.new("RGB", (96, 64), (0, 0, 255))
    out = BytesIO()
    first.save(out, format="MPO", save_all=True, append_images=[second], exif=exif_orientation(6))
    decoded = decode(out.getvalue())
    assert decoded.image.size == (64, 96)
    assert close(pixel(decoded.image), RED, 3)


def test_progressive_and_grey_jpeg() -> None:
    source = gradient()
    progressive = decode(encode(source, "JPEG", quality=95, progressive=True))
    assert progressive.image.size == (64, 64)
    grey = decode(encode(Image.new("L", (64, 64), 77), "JPEG"))
    assert close(pixel(grey.image), (77, 77, 77), 1)


def test_animated_webp_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (64, 64), RED), Image.new("RGB", (64, 64), (0, 0, 255))]
    out = BytesIO()
    frames[0].save(out, format="WEBP", save_all=True, append_images=frames[1:], lossless=True)
    assert pixel(decode(out.getvalue()).image) == RED


# -- outputs ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(OutputFormat))
def test_every_output_carries_an_srgb_profile(fmt: OutputFormat) -> None:
    data = encode_image(gradient(), fmt)
    with Image.open(BytesIO(data)) as output:
        icc = output.info.get("icc_profile")
    assert icc == SRGB_PROFILE
    profile = ImageCms.ImageCmsProfile(BytesIO(icc))
    assert profile.profile.xcolor_space.strip() == "RGB"
    assert "sRGB" in profile.profile.profile_description


def test_srgb_profile_bytes_do_not_change_between_processes() -> None:
    # The creation date is fixed, so equal pixels give equal objects on every worker.
    assert SRGB_PROFILE[24:36] == bytes.fromhex("07ea00010001000000000000")


@pytest.mark.parametrize("fmt", [OutputFormat.PNG, OutputFormat.WEBP])
def test_kept_alpha_is_resized_to_the_output(fmt: OutputFormat) -> None:
    alpha = cut_out((96, 64)).getchannel("A")
    data = encode_image(Image.new("RGB", (192, 128), RED), fmt, alpha=alpha)
    assert data == encode_image(Image.new("RGB", (192, 128), RED), fmt, alpha=alpha)
    with Image.open(BytesIO(data)) as output:
        assert output.mode == "RGBA"
        kept = output.getchannel("A")
    expected = alpha.resize((192, 128), Image.Resampling.LANCZOS)
    assert kept.tobytes() == expected.tobytes()


def test_jpeg_cannot_keep_alpha() -> None:
    with pytest.raises(ValueError, match="no alpha"):
        encode_image(gradient(), OutputFormat.JPEG, alpha=Image.new("L", (64, 64), 0))


@pytest.mark.parametrize(
    ("requested", "has_alpha", "fmt", "pure", "keep"),
    [
        (OutputAlpha.AUTO, True, OutputFormat.PNG, True, True),
        (OutputAlpha.AUTO, True, OutputFormat.WEBP, True, True),
        (OutputAlpha.AUTO, True, OutputFormat.JPEG, True, False),
        (OutputAlpha.AUTO, True, OutputFormat.PNG, False, False),  # a free prompt may move shapes
        (OutputAlpha.AUTO, False, OutputFormat.PNG, True, False),
        (OutputAlpha.KEEP, True, OutputFormat.PNG, False, True),
        (OutputAlpha.FLATTEN, True, OutputFormat.PNG, True, False),
    ],
)
def test_alpha_rule(
    requested: OutputAlpha, has_alpha: bool, fmt: OutputFormat, pure: bool, keep: bool
) -> None:
    assert keeps_alpha(requested, base_has_alpha=has_alpha, fmt=fmt, pure_recolor=pure) is keep
