"""Decoding untrusted input images, encoding outputs, and output-size rules.

Inputs arrive from producers we do not control, so decoding is defensive: only allow-listed formats are
probed, the declared size is checked against our own pixel cap before any pixel is decoded, and every
Pillow failure becomes a typed `InvalidImage` / `ImageTooLarge` naming the input.

Decoding hands the model what a colour-managed viewer shows: upright (EXIF orientation), converted to
sRGB through the embedded ICC profile by LittleCMS (no profile means sRGB), deep samples scaled to
8 bits, and transparency composited onto a background. Outputs are sRGB and say so (an embedded ICC
profile), so a hex colour in a request means the same colour in the object.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO

import numpy as np
import pillow_heif
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError, features

from pipeline.errors import ImageTooLarge, InvalidImage
from schemas.requests import OutputAlpha, OutputFormat

# HEIC/HEIF (the iPhone default) through libheif; AVIF through Pillow's own plugin (Pillow >= 11.3
# wheels), else pillow-avif-plugin where it is installed.
pillow_heif.register_heif_opener()
if not features.check("avif"):  # pragma: no cover - the pinned Pillow has AVIF
    with contextlib.suppress(ImportError):
        importlib.import_module("pillow_avif")  # registers the AVIF plugin on import

# What Flux2KleinPipeline's image processor accepts (it raises a bare ValueError otherwise).
MIN_SIDE = 64
MAX_ASPECT = 8.0
SIZE_MULTIPLE = 16
QUALITY = 95
_ALIASES = {"JPG": "JPEG", "HEIC": "HEIF"}
_WHITE = (255, 255, 255)
# Colour space of an ICC profile (its header) -> the Pillow mode LittleCMS reads through it.
_PROFILE_MODES = {"RGB": "RGB", "GRAY": "L", "CMYK": "CMYK"}
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
# Formats Pillow cannot open at all, by their magic bytes, to name them in the error.
_SIGNATURES = (
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (b"%PDF", "PDF"),
    (b"<svg", "SVG"),
)


def _srgb_profile_bytes() -> bytes:
    # LittleCMS stamps the creation time into the header; a fixed date keeps outputs byte-identical
    # for identical pixels, across processes and restarts.
    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    data[24:36] = bytes.fromhex("07ea00010001000000000000")  # 2026-01-01 00:00:00
    return bytes(data)


SRGB_PROFILE = _srgb_profile_bytes()
SRGB = "sRGB"


@dataclass(frozen=True)
class DecodedImage:
    """An input as the model must see it, plus what the output may need from it.

    `image`: mode RGB, upright, sRGB, 8 bits, transparency composited onto the background.
    `alpha`: mode L, same size, upright; None when the input has no transparent pixel.
    `format`: the Pillow format id found (e.g. "JPEG", "HEIF"); `profile`: the description of the
    ICC profile the pixels were converted from, None when there was none (taken as sRGB).
    """

    image: Image.Image
    alpha: Image.Image | None
    format: str
    profile: str | None = None


def decode_image(
    data: bytes,
    *,
    max_pixels: int,
    formats: Sequence[str],
    name: str,
    background: tuple[int, int, int] = _WHITE,
) -> DecodedImage:
    """Decode `data` into upright sRGB pixels for the model, or raise a typed error naming `name`.

    `background` is the sRGB (r, g, b) that transparent areas are composited onto. Errors:
    `InvalidImage` (empty, not an image, a format not in `formats`, truncated), `ImageTooLarge`
    (more than `max_pixels` declared, or a decompression bomb), both before any pixel is decoded.
    """
    allowed = allowed_formats(formats)
    if not data:
        raise InvalidImage(f"{name}: empty input, expected an image ({'/'.join(allowed)})")
    try:
        # Pillow only warns below 2x MAX_IMAGE_PIXELS; a bomb must never get as far as decoding.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(BytesIO(data), formats=allowed)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageTooLarge(f"{name}: image declares too many pixels ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise InvalidImage(_unidentified_message(data, allowed, name)) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage(f"{name}: cannot read image header: {exc}") from exc

    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageTooLarge(
            f"{name}: {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} pixels"
        )
    if width < 1 or height < 1:
        raise InvalidImage(f"{name}: image has no pixels ({width}x{height})")
    found = image.format or "unknown"
    try:
        image.load()
        icc = image.info.get("icc_profile")
        upright = ImageOps.exif_transpose(image)
        color, alpha = _split_alpha(_eight_bit(upright))
        rgb, profile = _to_srgb(color, icc if isinstance(icc, bytes) else None)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageTooLarge(f"{name}: image declares too many pixels ({exc})") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        # Truncated files surface here: Pillow reads the header eagerly but the pixels lazily.
        raise InvalidImage(f"{name}: cannot decode {found} image: {exc}") from exc
    if alpha is not None:
        flat = Image.new("RGB", rgb.size, background)
        flat.paste(rgb, mask=alpha)
        rgb = flat
    return DecodedImage(image=rgb, alpha=alpha, format=found, profile=profile)


def _eight_bit(image: Image.Image) -> Image.Image:
    """`image` in one of L, LA, RGB, RGBA or CMYK; deep samples scaled (not clipped) to 8 bits."""
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA", "CMYK"):
        if "transparency" in image.info and mode in ("L", "RGB"):
            # A tRNS colour key: the pixels of that value are transparent.
            return image.convert("LA" if mode == "L" else "RGBA")
        return image
    if mode in _SIXTEEN_BIT or mode == "I":
        return _scaled_grey(image)
    if mode in ("P", "PA"):
        return image.convert("RGBA" if mode == "PA" or "transparency" in image.info else "RGB")
    if mode == "La":
        return image.convert("LA")
    if mode in ("RGBa", "RGBX", "YCbCr", "HSV"):
        return image.convert("RGBA" if mode == "RGBa" else "RGB")
    if mode == "LAB":
        lab = ImageCms.createProfile("LAB")
        srgb = ImageCms.createProfile("sRGB")
        converted = ImageCms.profileToProfile(image, lab, srgb, outputMode="RGB")
        assert converted is not None
        return converted
    # "1", "F" and anything exotic: Pillow's own conversion.
    return image.convert("RGB" if mode not in ("1", "F") else "L")


def _scaled_grey(image: Image.Image) -> Image.Image:
    """16-bit grey (mode I;16*) and 32-bit integer (mode I) to 8-bit L by scaling, not clipping.

    Mode I holds 16-bit sources (e.g. PNGs read by older Pillows) as often as 32-bit ones, so values
    that fit in 16 bits are scaled from 0-65535 and only larger ones from the full 32-bit range.
    A grey tRNS colour key becomes an alpha channel (mode LA).
    """
    values = np.asarray(image)
    if image.mode == "I" and int(values.max(initial=0)) > 65535:
        top = 2**31 - 1
        scaled = (np.clip(values, 0, None).astype(np.float64) * (255 / top)).round()
    else:
        # uint32 holds 65535 * 255 in half the memory int64 would take for a 40 MP input.
        scaled = (np.clip(values, 0, 65535).astype(np.uint32) * 255 + 32767) // 65535
    grey = Image.fromarray(scaled.astype(np.uint8), "L")
    key = image.info.get("transparency")
    if isinstance(key, int):
        alpha = Image.fromarray(np.where(values == key, 0, 255).astype(np.uint8), "L")
        grey = Image.merge("LA", (grey, alpha))
    return grey


def _split_alpha(image: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """(colour channels, alpha) with alpha None when every pixel is opaque."""
    if image.mode not in ("LA", "RGBA"):
        return image, None
    alpha = image.getchannel("A")
    color = image.convert(image.mode[:-1])
    lowest, _ = alpha.getextrema()
    return color, (alpha if int(lowest) < 255 else None)  # type: ignore[arg-type]


def _to_srgb(image: Image.Image, icc: bytes | None) -> tuple[Image.Image, str | None]:
    """RGB in sRGB: through the embedded ICC profile with LittleCMS, else taken as sRGB already.

    A profile that cannot be parsed, or whose colour space does not fit the pixels, is ignored, as
    browsers do. A profile that is sRGB in all but rounding (the many sRGB profiles in the wild, our
    own outputs') leaves the pixels untouched, so a tagged sRGB image gives the model exactly what
    its untagged twin does. CMYK without a profile gets Pillow's standard conversion. Transforms are
    built per image: an lcms2 transform is not safe to share between the decoding threads.
    """
    source = _parse_profile(icc)
    if source is not None:
        space = source.profile.xcolor_space.strip()
        profile_mode = _PROFILE_MODES.get(space)
        if profile_mode == "RGB" and image.mode == "L":
            image = image.convert("RGB")  # e.g. a grey JPEG tagged with an RGB profile
        if profile_mode == image.mode:
            transform = ImageCms.buildTransform(
                source, _srgb_cms_profile(), image.mode, "RGB", renderingIntent=ImageCms.Intent.PERCEPTUAL
            )
            description = source.profile.profile_description or space
            if image.mode != "CMYK" and _is_srgb_already(transform, image.mode):
                return (image if image.mode == "RGB" else image.convert("RGB")), description
            converted = ImageCms.applyTransform(image, transform)
            assert converted is not None  # only None with inPlace=True
            return converted, description
    return (image if image.mode == "RGB" else image.convert("RGB")), None


def _is_srgb_already(transform: ImageCms.ImageCmsTransform, mode: str) -> bool:
    """Whether `transform` moves no colour by more than rounding (1/255) on a probe of the space."""
    probe = _SRGB_PROBES[mode]
    converted = ImageCms.applyTransform(probe, transform)
    assert converted is not None
    expected = np.asarray(probe.convert("RGB"), dtype=np.int16)
    return int(np.abs(np.asarray(converted, dtype=np.int16) - expected).max()) <= 1


def _probes() -> dict[str, Image.Image]:
    levels = np.linspace(0, 255, 18).round().astype(np.uint8)
    cube = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
    ramp = np.arange(256, dtype=np.uint8)
    zeros = np.zeros(256, dtype=np.uint8)
    ramps = [
        np.stack(channels, axis=-1)
        for channels in ((ramp, ramp, ramp), (ramp, zeros, zeros), (zeros, ramp, zeros), (zeros, zeros, ramp))
    ]
    rgb = np.concatenate([cube, *ramps])
    return {
        "RGB": Image.fromarray(rgb.reshape(1, -1, 3), "RGB"),
        "L": Image.fromarray(ramp.reshape(1, -1), "L"),
    }


_SRGB_PROBES = _probes()


def _parse_profile(icc: bytes | None) -> ImageCms.ImageCmsProfile | None:
    if not icc:
        return None
    try:
        return ImageCms.ImageCmsProfile(BytesIO(icc))
    except (OSError, ValueError, TypeError, ImageCms.PyCMSError):
        return None


def _srgb_cms_profile() -> ImageCms.ImageCmsProfile:
    # LittleCMS's own in-memory sRGB (exact primaries), not SRGB_PROFILE read back: its s15Fixed16
    # colorants would move a few values by 1, away from what any other LittleCMS conversion gives.
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def allowed_formats(formats: Sequence[str]) -> list[str]:
    """Pillow format ids for a configured allow-list ("jpg" -> "JPEG"); unknown names are an error."""
    Image.init()
    ids = [_ALIASES.get(fmt.upper(), fmt.upper()) for fmt in formats]
    unknown = [fmt for fmt in ids if fmt not in Image.OPEN]
    if unknown:
        # A configuration mistake, not a bad input: Pillow would raise a bare KeyError.
        raise ValueError(f"unknown image format(s) in the allow-list: {', '.join(unknown)}")
    return ids


def _unidentified_message(data: bytes, allowed: list[str], name: str) -> str:
    """Say which format it was when it is a real image in a format we do not accept."""
    actual: str | None = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Header parse only (no pixels), purely to name the format in the message.
            with Image.open(BytesIO(data)) as probe:
                actual = probe.format
    except Exception:
        actual = None
    if actual is None:
        head = data[:64].lstrip()
        actual = next((label for magic, label in _SIGNATURES if head.startswith(magic)), None)
        if actual is None and head.startswith(b"<?xml") and b"<svg" in data[:1024]:
            actual = "SVG"
    if actual:
        return f"{name}: image format {actual} is not allowed (allowed: {', '.join(allowed)})"
    return f"{name}: not an image in an allowed format ({', '.join(allowed)})"


def check_edit_input(image: Image.Image, name: str) -> None:
    """Raise `InvalidImage` for sizes the model rejects (sides under 64 px, aspect ratio over 8)."""
    width, height = image.size
    if width < MIN_SIDE or height < MIN_SIDE:
        raise InvalidImage(
            f"{name}: {width}x{height} is too small; both sides must be at least {MIN_SIDE} px"
        )
    if max(width / height, height / width) > MAX_ASPECT:
        raise InvalidImage(f"{name}: {width}x{height} has an aspect ratio over {MAX_ASPECT:g}:1")


def encode_image(image: Image.Image, fmt: OutputFormat, *, alpha: Image.Image | None = None) -> bytes:
    """Encode as PNG, JPEG or WebP with an sRGB ICC profile; identical inputs give identical bytes.

    `alpha` (mode L, any size: it is resized to the image's) becomes the output's alpha channel; only
    PNG and WebP have one (`ValueError` for JPEG).
    """
    # Rebuild from raw pixels so no metadata (ICC profile, EXIF, text chunks) of the source leaks in.
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    clean = Image.frombytes("RGB", rgb.size, rgb.tobytes())
    if alpha is not None:
        if not fmt.supports_alpha:
            raise ValueError(f"{fmt.value} has no alpha channel")
        mask = alpha.convert("L")
        if mask.size != clean.size:
            mask = mask.resize(clean.size, Image.Resampling.LANCZOS)
        clean.putalpha(mask)
    out = BytesIO()
    if fmt is OutputFormat.PNG:
        clean.save(out, format="PNG", compress_level=6, icc_profile=SRGB_PROFILE)
    elif fmt is OutputFormat.JPEG:
        # 4:4:4 keeps exact colours of small recoloured regions that 4:2:0 chroma subsampling would blur.
        clean.save(out, format="JPEG", quality=QUALITY, subsampling=0, icc_profile=SRGB_PROFILE)
    elif fmt is OutputFormat.WEBP:
        clean.save(out, format="WEBP", quality=QUALITY, method=4, icc_profile=SRGB_PROFILE)
    else:  # pragma: no cover - exhaustive over OutputFormat
        raise ValueError(f"unsupported output format {fmt!r}")
    return out.getvalue()


def keeps_alpha(
    requested: OutputAlpha, *, base_has_alpha: bool, fmt: OutputFormat, pure_recolor: bool
) -> bool:
    """Whether the output carries the base image's alpha (`OutputSpec.alpha`, with "auto" resolved).

    "auto" keeps it only when there is transparency to keep, the format can hold it, and the request
    is a pure recolor (the template keeps every shape, so the cut-out still fits the edited pixels).
    """
    if requested is OutputAlpha.KEEP:
        return fmt.supports_alpha
    if requested is OutputAlpha.FLATTEN:
        return False
    return base_has_alpha and fmt.supports_alpha and pure_recolor


def resolve_output_size(
    base_size: tuple[int, int], requested: tuple[int, int] | None, max_megapixels: float
) -> tuple[int, int]:
    """The (width, height) to generate: the requested size, else the base size capped in area.

    The base size is scaled down (never up), keeping its aspect ratio, until width*height fits
    `max_megapixels`, then floored to multiples of 16 with at least 64 px per side.
    """
    if requested is not None:
        return requested
    width, height = base_size
    cap = max_megapixels * 1e6
    if width * height > cap:
        scale = math.sqrt(cap / (width * height))
        width, height = math.floor(width * scale), math.floor(height * scale)
    return _floor_to_multiple(width), _floor_to_multiple(height)


def _floor_to_multiple(side: int) -> int:
    return max(MIN_SIDE, side // SIZE_MULTIPLE * SIZE_MULTIPLE)


def megapixels(image: Image.Image) -> float:
    """Area in millions of pixels (the billing unit)."""
    width, height = image.size
    return width * height / 1e6
