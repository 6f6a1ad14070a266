"""Decoding untrusted input images, encoding outputs, and output-size rules.

Inputs arrive from producers we do not control, so decoding is defensive: only allow-listed formats are
probed, the declared size is checked against our own pixel cap before any pixel is decoded, and every
Pillow failure becomes a typed `InvalidImage` / `ImageTooLarge` naming the input.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from io import BytesIO

from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.errors import ImageTooLarge, InvalidImage
from schemas.requests import OutputFormat

# What Flux2KleinPipeline's image processor accepts (it raises a bare ValueError otherwise).
MIN_SIDE = 64
MAX_ASPECT = 8.0
SIZE_MULTIPLE = 16
QUALITY = 95
_ALIASES = {"JPG": "JPEG"}


def decode_image(data: bytes, *, max_pixels: int, formats: Sequence[str], name: str) -> Image.Image:
    """Decode `data` into a fully loaded, upright RGB image, or raise a typed error naming `name`."""
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
    try:
        image.load()
        upright = ImageOps.exif_transpose(image)
        rgb = upright.convert("RGB")
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageTooLarge(f"{name}: image declares too many pixels ({exc})") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        # Truncated files surface here: Pillow reads the header eagerly but the pixels lazily.
        raise InvalidImage(f"{name}: cannot decode {image.format} image: {exc}") from exc
    return rgb


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


def encode_image(image: Image.Image, fmt: OutputFormat) -> bytes:
    """Encode as PNG, JPEG or WebP; identical pixels always give identical bytes."""
    # Rebuild from raw pixels so no metadata (ICC profile, EXIF, text chunks) of the source leaks in.
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    clean = Image.frombytes("RGB", rgb.size, rgb.tobytes())
    out = BytesIO()
    if fmt is OutputFormat.PNG:
        clean.save(out, format="PNG", compress_level=6)
    elif fmt is OutputFormat.JPEG:
        # 4:4:4 keeps exact colours of small recoloured regions that 4:2:0 chroma subsampling would blur.
        clean.save(out, format="JPEG", quality=QUALITY, subsampling=0)
    elif fmt is OutputFormat.WEBP:
        clean.save(out, format="WEBP", quality=QUALITY, method=4)
    else:  # pragma: no cover - exhaustive over OutputFormat
        raise ValueError(f"unsupported output format {fmt!r}")
    return out.getvalue()


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
