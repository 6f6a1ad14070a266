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
from PIL import Image, ImageCms, ImageOps, PngImagePlugin, UnidentifiedImageError, features

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
    draft_pixels: int | None = None,
) -> DecodedImage:
    """Decode `data` into upright sRGB pixels for the model, or raise a typed error naming `name`.

    `background` is the sRGB (r, g, b) that transparent areas are composited onto. `draft_pixels`: the
    most pixels the caller will ever condition on; a JPEG larger than twice that is decoded with
    Pillow's `draft()` (DCT scaling by 1/2, 1/4 or 1/8) to the smallest size still holding that many
    pixels, so a 36 MP photo never lives in host memory at full size. Errors:
    `InvalidImage` (empty, not an image, a format not in `formats`, truncated); `ImageTooLarge`
    (more than `max_pixels` declared, or a decompression bomb), raised before any pixel is decoded.
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
    if draft_pixels is not None and found == "JPEG" and width * height > 2 * draft_pixels:
        scale = math.sqrt(draft_pixels / (width * height))
        image.draft(image.mode, (math.ceil(width * scale), math.ceil(height * scale)))
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
        transform = _transform(source, image.mode) if profile_mode == image.mode else None
        if transform is not None:
            description = source.profile.profile_description or space
            if image.mode != "CMYK" and _is_srgb_already(transform, image.mode):
                return (image if image.mode == "RGB" else image.convert("RGB")), description
            converted = ImageCms.applyTransform(image, transform)
            assert converted is not None  # only None with inPlace=True
            return converted, description
    return (image if image.mode == "RGB" else image.convert("RGB")), None


def _transform(source: ImageCms.ImageCmsProfile, mode: str) -> ImageCms.ImageCmsTransform | None:
    """`source` -> sRGB for pixels of `mode`; None when LittleCMS cannot use the profile (missing tags)."""
    try:
        return ImageCms.buildTransform(
            source, _srgb_cms_profile(), mode, "RGB", renderingIntent=ImageCms.Intent.PERCEPTUAL
        )
    except (ImageCms.PyCMSError, OSError, ValueError):
        return None


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


def identify_image(data: bytes, *, formats: Sequence[str], name: str) -> str:
    """The Pillow format id (e.g. "PNG") of `data`, read from its header only (no pixels are decoded).

    Raises `InvalidImage` (empty, not an image, or a format not in `formats`), with the same words
    as `decode_image`, so a client can check a file before sending it to the worker.
    """
    allowed = allowed_formats(formats)
    if not data:
        raise InvalidImage(f"{name}: empty input, expected an image ({'/'.join(allowed)})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a bomb is the worker's to refuse; only the format matters
            with Image.open(BytesIO(data), formats=allowed) as image:
                return str(image.format)
    except UnidentifiedImageError as exc:
        raise InvalidImage(_unidentified_message(data, allowed, name)) from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InvalidImage(f"{name}: cannot read image header: {exc}") from exc


def check_edit_input(image: Image.Image, name: str) -> None:
    """Raise `InvalidImage` for sizes the model rejects (sides under 64 px, aspect ratio over 8)."""
    width, height = image.size
    if width < MIN_SIDE or height < MIN_SIDE:
        raise InvalidImage(
            f"{name}: {width}x{height} is too small; both sides must be at least {MIN_SIDE} px"
        )
    if max(width / height, height / width) > MAX_ASPECT:
        raise InvalidImage(f"{name}: {width}x{height} has an aspect ratio over {MAX_ASPECT:g}:1")


def encode_image(
    image: Image.Image,
    fmt: OutputFormat,
    *,
    alpha: Image.Image | None = None,
    xmp: bytes | None = None,
    quality: int | None = None,
    lossless: bool = False,
) -> bytes:
    """Encode as PNG, JPEG or WebP with an sRGB ICC profile; identical inputs give identical bytes.

    `alpha` (mode L, any size: it is resized to the image's) becomes the output's alpha channel; only
    PNG and WebP have one (`ValueError` for JPEG). `xmp` (a packet, `pipeline.marking.xmp_packet`) goes
    in each format's standard place: PNG `iTXt XML:com.adobe.xmp` (uncompressed), JPEG `APP1`, WebP
    `XMP ` chunk. `quality` (1-100, default `QUALITY`) sets JPEG and WebP quality; `lossless` makes WebP
    lossless (quality is then its effort).
    """
    quality = QUALITY if quality is None else quality
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
        # Pillow's PNG writer has no `xmp=`; the iTXt chunk it reads back as info["xmp"] is the standard.
        text = PngImagePlugin.PngInfo()
        if xmp:
            text.add_itxt("XML:com.adobe.xmp", xmp.decode("utf-8"), zip=False)
        clean.save(out, format="PNG", compress_level=6, icc_profile=SRGB_PROFILE, pnginfo=text)
    elif fmt is OutputFormat.JPEG:
        # 4:4:4 keeps exact colours of small recoloured regions that 4:2:0 chroma subsampling would blur.
        clean.save(
            out, format="JPEG", quality=quality, subsampling=0, icc_profile=SRGB_PROFILE, xmp=xmp or b""
        )
    elif fmt is OutputFormat.WEBP:
        clean.save(
            out,
            format="WEBP",
            quality=quality,
            lossless=lossless,
            method=4,
            icc_profile=SRGB_PROFILE,
            xmp=xmp or b"",
        )
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


# Flux2KleinPipeline shrinks a conditioning image larger than this area (diffusers 0.42.1,
# `Flux2KleinPipeline.__call__`, step 4) before flooring its sides to multiples of 16 and centre-cropping.
CONDITIONING_MAX_PIXELS = 1024 * 1024
_SEARCH_STEPS = (
    3  # how many 16-px steps around the nearest size `fit_size` looks when that one breaks a limit
)


@dataclass(frozen=True)
class Geometry:
    """The sizes of one edit, all (width, height) in pixels and multiples of 16.

    `output` is what the pipeline generates; `inputs[i]` is the exact size input i is resized to in the
    prepare stage, which is also the size the pipeline conditions on (it then neither resamples nor crops).
    """

    output: tuple[int, int]
    inputs: tuple[tuple[int, int], ...]


def fit_size(size: tuple[int, int], max_pixels: float) -> tuple[int, int]:
    """`size` scaled down (never up) to fit `max_pixels`, each side rounded to the nearest multiple of 16.

    The one rule for every size in an edit. Rounding to the nearest multiple (not flooring) keeps the
    aspect ratio within one 16-px step: 130x79 gives 128x80 (aspect 1.60 for 1.65), not 128x64 (2.00).
    When rounding up would overshoot `max_pixels` or the 8:1 aspect limit, the closest-aspect size that
    fits within a few 16-px steps of it is taken instead. Sides are at least 64 px.
    """
    width, height = size
    scale = min(1.0, math.sqrt(max_pixels / (width * height)))
    exact_w, exact_h = width * scale, height * scale
    nearest = (_round_to_multiple(exact_w), _round_to_multiple(exact_h))
    steps = range(-_SEARCH_STEPS, _SEARCH_STEPS + 1)
    candidates = [
        (max(MIN_SIDE, nearest[0] + i * SIZE_MULTIPLE), max(MIN_SIDE, nearest[1] + j * SIZE_MULTIPLE))
        for i in steps
        for j in steps
    ]

    def allowed(c: tuple[int, int]) -> bool:
        # Rounding can push a long thin image past the pipeline's 8:1 aspect limit: that size is out too.
        return c[0] * c[1] <= max_pixels and max(c[0] / c[1], c[1] / c[0]) <= MAX_ASPECT

    if allowed(nearest):
        return nearest
    aspect = math.log(width / height)
    fitting = [c for c in candidates if allowed(c)] or [min(candidates, key=lambda c: c[0] * c[1])]
    return min(fitting, key=lambda c: (abs(math.log(c[0] / c[1]) - aspect), -c[0] * c[1]))


def plan_geometry(
    input_sizes: Sequence[tuple[int, int]], requested: tuple[int, int] | None, max_megapixels: float
) -> Geometry:
    """The output size and each input's conditioning size for one edit (base image first).

    Output: the requested size, else the base image's size fitted to `max_megapixels` (`fit_size`).
    Inputs: each fitted to the pipeline's conditioning area (`CONDITIONING_MAX_PIXELS`); the base image is
    conditioned at exactly the output size whenever that fits the area, so the two never differ.
    """
    if not input_sizes:
        raise ValueError("an edit needs at least the base image")
    output = requested if requested is not None else fit_size(input_sizes[0], max_megapixels * 1e6)
    inputs = [fit_size(size, CONDITIONING_MAX_PIXELS) for size in input_sizes]
    if requested is None and output[0] * output[1] <= CONDITIONING_MAX_PIXELS:
        inputs[0] = output
    return Geometry(output=output, inputs=tuple(inputs))


def size_for_area(aspect: float, megapixels: float) -> tuple[int, int]:
    """The output size of `megapixels` (area, MP) at `aspect` (width / height), by the one rule of
    `fit_size`: multiples of 16, the closest aspect within the area, 8:1 at most."""
    return fit_size((round(aspect * 100_000), 100_000), megapixels * 1e6)


def to_conditioning_size(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` resized and centre-cropped to exactly `size` (a no-op when it already has that size).

    Lanczos, as the pipeline resamples; the crop removes at most part of one 16-px step of aspect.
    """
    if image.size == size:
        return image
    return ImageOps.fit(image, size, method=Image.Resampling.LANCZOS)


def conform_to_pipeline(image: Image.Image, name: str) -> Image.Image:
    """`image` unchanged when the pipeline would take it as it is, else resized to `fit_size` of it.

    "As it is" means sides in multiples of 16 and at most `CONDITIONING_MAX_PIXELS`: the pipeline then
    neither resamples nor crops. The worker's prepare stage already resized every input
    (`to_conditioning_size`), so on the GPU thread this only checks. Raises `InvalidImage` for sizes the
    model rejects (`check_edit_input`).
    """
    check_edit_input(image, name)
    width, height = image.size
    if (
        width % SIZE_MULTIPLE == 0
        and height % SIZE_MULTIPLE == 0
        and width * height <= CONDITIONING_MAX_PIXELS
    ):
        return image
    return to_conditioning_size(image, fit_size(image.size, CONDITIONING_MAX_PIXELS))


def _round_to_multiple(side: float) -> int:
    return max(MIN_SIDE, math.floor(side / SIZE_MULTIPLE + 0.5) * SIZE_MULTIPLE)


def megapixels(image: Image.Image) -> float:
    """Area in millions of pixels (the billing unit)."""
    width, height = image.size
    return width * height / 1e6
