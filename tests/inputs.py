"""Real-world test inputs built in code: ICC profiles (wide-gamut RGB, grey, CMYK) and encoded images.

Pillow's `ImageCms.createProfile` only makes sRGB, Lab and XYZ profiles, so the others are written here
byte by byte from the ICC.1:2001-04 (v2.1) spec: a matrix/TRC profile from primaries and white point
(Display P3, Adobe RGB (1998)), a grey TRC profile, and a CMYK output profile whose A2B0 is a 2-point
lut16 (a toy press: multiplicative inks on cream paper). LittleCMS reads them like any vendor's profile.
"""

from __future__ import annotations

import struct
import zlib
from io import BytesIO

import numpy as np
from PIL import Image, ImageCms

from schemas.results import OutputInfo

D50 = (0.9642, 1.0, 0.8249)
D65_XY = (0.3127, 0.3290)
# Bradford cone-response matrix (ICC.1 Annex E).
_BRADFORD = np.array(
    [[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]], dtype=np.float64
)
# IEC 61966-2-1 transfer function as an ICC parametric curve (type 3): g, a, b, c, d.
SRGB_TRC = (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045)
DISPLAY_P3 = ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060))
ADOBE_RGB = ((0.640, 0.330), (0.210, 0.710), (0.150, 0.060))
ADOBE_RGB_GAMMA = 563 / 256


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz_tag(xyz: tuple[float, float, float] | np.ndarray) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(_s15(float(v)) for v in xyz)


def _desc_tag(text: str) -> bytes:
    ascii_text = text.encode("ascii") + b"\0"
    return (
        b"desc\0\0\0\0"
        + struct.pack(">I", len(ascii_text))
        + ascii_text
        + struct.pack(">II", 0, 0)  # no Unicode description
        + struct.pack(">HB", 0, 0)
        + b"\0" * 67  # no ScriptCode description
    )


def _text_tag(text: str) -> bytes:
    return b"text\0\0\0\0" + text.encode("ascii") + b"\0"


def _gamma_tag(gamma: float) -> bytes:
    return b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256))


def _table_tag(entries: int) -> bytes:
    """The sRGB transfer function sampled as a `curv` table, as the classic HP/Microsoft profile has it."""
    x = np.linspace(0, 1, entries)
    y = np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    return (
        b"curv\0\0\0\0"
        + struct.pack(">I", entries)
        + struct.pack(f">{entries}H", *np.round(y * 65535).astype(int))
    )


def _parametric_tag(params: tuple[float, ...]) -> bytes:
    kind = {1: 0, 3: 1, 4: 2, 5: 3, 7: 4}[len(params)]
    return b"para\0\0\0\0" + struct.pack(">HH", kind, 0) + b"".join(_s15(p) for p in params)


def _profile(device_class: bytes, color_space: bytes, pcs: bytes, tags: dict[bytes, bytes]) -> bytes:
    table_size = 4 + 12 * len(tags)
    offset = 128 + table_size
    entries, body = [], b""
    for signature, data in tags.items():
        padded = data + b"\0" * (-len(data) % 4)
        entries.append(struct.pack(">4sII", signature, offset + len(body), len(data)))
        body += padded
    size = offset + len(body)
    header = (
        struct.pack(">I", size)
        + b"\0\0\0\0"
        + bytes([2, 0x10, 0, 0])  # version 2.1
        + device_class
        + color_space
        + pcs
        + struct.pack(">6H", 2026, 1, 1, 0, 0, 0)
        + b"acsp"
        + b"\0" * 24  # platform, flags, manufacturer, model, attributes
        + struct.pack(">I", 0)  # perceptual
        + b"".join(_s15(v) for v in D50)
        + b"\0" * 48  # creator, profile id, reserved
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + b"".join(entries) + body


def _xy_to_xyz(x: float, y: float) -> np.ndarray:
    return np.array([x / y, 1.0, (1 - x - y) / y])


def _to_d50(xyz: np.ndarray, white: np.ndarray) -> np.ndarray:
    """Bradford chromatic adaptation from `white` to D50 (what ICC colorant tags must hold)."""
    source, target = _BRADFORD @ white, _BRADFORD @ np.array(D50)
    adapt = np.linalg.inv(_BRADFORD) @ np.diag(target / source) @ _BRADFORD
    return adapt @ xyz


def rgb_to_xyz_matrix(
    primaries: tuple[tuple[float, float], ...], white_xy: tuple[float, float] = D65_XY
) -> np.ndarray:
    """Linear RGB -> XYZ (white-relative, Y of white = 1) for the given chromaticities."""
    white = _xy_to_xyz(*white_xy)
    columns = np.stack([_xy_to_xyz(x, y) for x, y in primaries], axis=1)
    scale = np.linalg.solve(columns, white)
    matrix: np.ndarray = columns * scale
    return matrix


def matrix_profile(
    name: str,
    primaries: tuple[tuple[float, float], ...],
    *,
    trc: tuple[float, ...] = SRGB_TRC,
    white_xy: tuple[float, float] = D65_XY,
    table: int | None = None,
) -> bytes:
    """A display RGB matrix/TRC profile: Display P3 is `matrix_profile("Display P3", DISPLAY_P3)`.

    `table`: write the (sRGB) transfer function as a sampled curve of that many entries instead.
    """
    matrix = rgb_to_xyz_matrix(primaries, white_xy)
    white = _xy_to_xyz(*white_xy)
    adapted = _to_d50(matrix, white)
    if table is not None:
        curve = _table_tag(table)
    else:
        curve = _gamma_tag(trc[0]) if len(trc) == 1 else _parametric_tag(trc)
    return _profile(
        b"mntr",
        b"RGB ",
        b"XYZ ",
        {
            b"desc": _desc_tag(name),
            b"cprt": _text_tag("No copyright, test profile"),
            b"wtpt": _xyz_tag(D50),
            b"rXYZ": _xyz_tag(adapted[:, 0]),
            b"gXYZ": _xyz_tag(adapted[:, 1]),
            b"bXYZ": _xyz_tag(adapted[:, 2]),
            b"rTRC": curve,
            b"gTRC": curve,
            b"bTRC": curve,
        },
    )


def display_p3_profile() -> bytes:
    return matrix_profile("Display P3", DISPLAY_P3)


SRGB_PRIMARIES = ((0.64, 0.33), (0.30, 0.60), (0.15, 0.06))


def srgb_iec_profile() -> bytes:
    """An "sRGB IEC61966-2.1" v2 profile as cameras and editors embed it (1024-entry curves)."""
    return matrix_profile("sRGB IEC61966-2.1", SRGB_PRIMARIES, table=1024)


def adobe_rgb_profile() -> bytes:
    return matrix_profile("Adobe RGB (1998)", ADOBE_RGB, trc=(ADOBE_RGB_GAMMA,))


def grey_profile(gamma: float | None = 1.0) -> bytes:
    """A grey display profile with a pure gamma TRC (1.0: linear light, so 128 is much lighter in sRGB);
    `None` gives the sRGB transfer function ("sGray")."""
    return _profile(
        b"mntr",
        b"GRAY",
        b"XYZ ",
        {
            b"desc": _desc_tag("sGray" if gamma is None else f"Grey gamma {gamma:g}"),
            b"cprt": _text_tag("No copyright, test profile"),
            b"wtpt": _xyz_tag(D50),
            b"kTRC": _parametric_tag(SRGB_TRC) if gamma is None else _gamma_tag(gamma),
        },
    )


# Linear-light transmittance of each ink (C, M, Y, K) in sRGB primaries, and the paper's reflectance.
_INKS = np.array([[0.08, 0.55, 0.85], [0.75, 0.10, 0.45], [0.95, 0.85, 0.07], [0.03, 0.03, 0.03]])
# Cream paper (LittleCMS still maps blank paper to white: it fixes the white point of 8-bit transforms).
_PAPER = np.array([0.97, 0.94, 0.82])


def cmyk_profile() -> bytes:
    """A CMYK output profile (A2B0 only, XYZ PCS): each ink filters the cream paper multiplicatively."""
    srgb_to_xyz_d50 = _to_d50(rgb_to_xyz_matrix(SRGB_PRIMARIES), _xy_to_xyz(*D65_XY))
    grid = []
    # CLUT order: the first input channel varies slowest.
    for c in (0, 1):
        for m in (0, 1):
            for y in (0, 1):
                for k in (0, 1):
                    linear = _PAPER.copy()
                    for amount, ink in zip((c, m, y, k), _INKS, strict=True):
                        if amount:
                            linear = linear * ink
                    grid.append(srgb_to_xyz_d50 @ linear)
    identity = [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]
    ramp = [0, 65535]
    body = (
        b"mft2\0\0\0\0"
        + struct.pack(">BBBB", 4, 3, 2, 0)
        + b"".join(_s15(v) for v in identity)
        + struct.pack(">HH", 2, 2)
        + struct.pack(">8H", *(ramp * 4))
        # lut16 XYZ encoding: u1Fixed15 (1.0 = 32768).
        + b"".join(struct.pack(">3H", *(min(65535, round(v * 32768)) for v in xyz)) for xyz in grid)
        + struct.pack(">6H", *(ramp * 3))
    )
    return _profile(
        b"prtr",
        b"CMYK",
        b"XYZ ",
        {
            b"desc": _desc_tag("Toy press CMYK"),
            b"cprt": _text_tag("No copyright, test profile"),
            b"wtpt": _xyz_tag(D50),
            b"A2B0": body,
        },
    )


def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def to_srgb(image: Image.Image, profile: bytes) -> Image.Image:
    """What a correct decoder must hand the model: `image` converted through `profile` by LittleCMS."""
    source = ImageCms.ImageCmsProfile(BytesIO(profile))
    target = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    converted = ImageCms.profileToProfile(image, source, target, outputMode="RGB")
    assert converted is not None
    return converted


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def exif_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def png16(samples: np.ndarray) -> bytes:
    """A 16-bit PNG (grey, grey+alpha, RGB or RGBA by the last axis) of `samples`, shape (h, w, c).

    Pillow writes 16-bit grey only, so the 48- and 64-bit files cameras and editors produce are
    written here chunk by chunk.
    """
    height, width, channels = samples.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = samples.astype(">u2").reshape(height, width * channels)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def gradient(width: int, height: int) -> Image.Image:
    """An RGB test card whose every pixel differs from its neighbours (x ramp in R, y ramp in G)."""
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


def plain_png(image: Image.Image) -> bytes:
    """A plain PNG of the pixels alone: no ICC profile or other metadata carried over from a source."""
    return encode(Image.frombytes(image.mode, image.size, image.tobytes()), "PNG")


def check_stored(data: bytes, output: OutputInfo) -> Image.Image:
    """Decode a stored output object and check it against the result's `output` block (an
    `schemas.results.OutputInfo`): byte count, size, format, alpha and an embedded sRGB ICC profile."""
    assert len(data) == output.bytes
    image = Image.open(BytesIO(data))
    image.load()
    assert image.size == (output.width, output.height)
    assert image.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[output.format.value]
    assert ("A" in image.getbands()) is output.alpha
    icc = image.info.get("icc_profile")
    assert icc, "every output embeds an ICC profile"
    profile = ImageCms.ImageCmsProfile(BytesIO(icc)).profile
    assert output.color_profile == "sRGB"
    assert "sRGB" in profile.profile_description
    assert profile.xcolor_space.strip() == "RGB"
    return image


def xmp_of(data: bytes) -> dict[str, str] | None:
    """The XMP `rdf:Description` of an encoded image, read by Pillow; None when it carries no XMP."""
    image = Image.open(BytesIO(data))
    image.load()
    if "xmp" not in image.info:
        return None
    description: dict[str, str] = image.getxmp()["xmpmeta"]["RDF"]["Description"]
    return description
