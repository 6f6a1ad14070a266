"""Colour spaces and colour difference: hex, sRGB, CIELAB, CIEDE2000 and OKLab/OKLCh.

CIELAB (D65, 2° observer) and CIEDE2000 come from scikit-image (`skimage.color.rgb2lab`, `lab2xyz`,
`deltaE_ciede2000`); this module only adapts their shapes and dtypes. scikit-image has no OKLab, so
OKLab is Ottosson's definition ("A perceptual color space for image processing", 2020,
https://bottosson.github.io/posts/oklab/): a 3x3 matrix to LMS, a cube root, a second 3x3 matrix.
The sRGB transfer function is IEC 61966-2-1.

Shapes: every array function works on the last axis (`...x3`) and keeps the leading shape. Units:
sRGB as uint8 0-255 or float 0-1, CIELAB L* 0-100 and a*, b* roughly -128..127, OKLab L 0-1 and a, b
roughly -0.4..0.4, hue angles in degrees 0-360.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import numpy.typing as npt
import skimage.color

# scikit-image ships py.typed but leaves these functions unannotated; mypy strict calls them through Any.
_skcolor: Any = skimage.color

FloatArray = npt.NDArray[np.floating[Any]]
Rgb8 = tuple[int, int, int]

_HEX = re.compile(r"#?([0-9a-fA-F]{6}|[0-9a-fA-F]{3})")

# Ottosson 2020: linear sRGB -> LMS (M1 folded with the sRGB primaries), XYZ (D65) -> LMS, and
# cube-rooted LMS -> Lab (M2). The inverses are his published inverses, not numerical inversions.
_RGB_TO_LMS = np.array(
    [
        [0.4122214708, 0.5363325363, 0.0514459929],
        [0.2119034982, 0.6806995451, 0.1073969566],
        [0.0883024619, 0.2817188376, 0.6299787005],
    ]
)
_XYZ_TO_LMS = np.array(
    [
        [0.8189330101, 0.3618667424, -0.1288597137],
        [0.0329845436, 0.9293118715, 0.0361456387],
        [0.0482003018, 0.2643662691, 0.6338517070],
    ]
)
_LMS_TO_OKLAB = np.array(
    [
        [0.2104542553, 0.7936177850, -0.0040720468],
        [1.9779984951, -2.4285922050, 0.4505937099],
        [0.0259040371, 0.7827717662, -0.8086757660],
    ]
)
_OKLAB_TO_LMS = np.array(
    [
        [1.0, 0.3963377774, 0.2158037573],
        [1.0, -0.1055613458, -0.0638541728],
        [1.0, -0.0894841775, -1.2914855480],
    ]
)
_LMS_TO_RGB = np.array(
    [
        [4.0767416621, -3.3077115913, 0.2309699292],
        [-1.2684380046, 2.6097574011, -0.3413193965],
        [-0.0041960863, -0.7034186147, 1.7076147010],
    ]
)


def parse_hex(color: str) -> Rgb8:
    """`"#1E90FF"` (or `"1e90ff"`, or the CSS short form `"#0A0"` = `"#00AA00"`) -> `(30, 144, 255)`.

    Raises `ValueError` for anything but six or three hex digits with an optional leading `#` (the forms
    a request's `recolor[].color` accepts).
    """
    match = _HEX.fullmatch(color.strip())
    if match is None:
        raise ValueError(f"not a #RRGGBB or #RGB colour: {color!r}")
    digits = match.group(1)
    if len(digits) == 3:
        digits = "".join(d * 2 for d in digits)
    return int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16)


def to_hex(rgb: Rgb8) -> str:
    """`(30, 144, 255)` -> `"#1E90FF"`."""
    return "#{:02X}{:02X}{:02X}".format(*rgb)


def srgb_to_lab(rgb: npt.ArrayLike) -> FloatArray:
    """sRGB `...x3` (uint8 0-255, or float 0-1) -> CIELAB `...x3` (D65, 2°), via `skimage.color.rgb2lab`.

    uint8 input gives float32 (images: half the memory and twice the speed of float64, and the Lab
    values are good to about 1e-5); float input keeps its dtype.
    """
    array = np.asarray(rgb)
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / np.float32(255.0)
    result: FloatArray = _skcolor.rgb2lab(array)
    return result


def hex_to_lab(color: str) -> FloatArray:
    """`"#1E90FF"` -> CIELAB `(3,)` float64, about (59.38, 9.95, -63.38)."""
    return srgb_to_lab(np.array(parse_hex(color), dtype=np.float64) / 255.0)


def delta_e00(lab1: npt.ArrayLike, lab2: npt.ArrayLike, *, kl: float = 1.0) -> FloatArray:
    """CIEDE2000 between CIELAB arrays `...x3` (broadcast), `...` out; `skimage.color.deltaE_ciede2000`.

    `kl` is the lightness weight kL (kC = kH = 1): 1 for the CIE reference conditions, 2 for textiles
    (the textile practice: CIE 116-1995 sets kL = 2 for textiles, and the CMC 2:1 of ISO 105-J03 also
    weights lightness by half). Sharma, Wu and Dalal (2005) give the reference pairs it is tested on.
    """
    result: FloatArray = _skcolor.deltaE_ciede2000(lab1, lab2, kL=kl)
    return result


def srgb_to_linear(rgb: npt.ArrayLike) -> FloatArray:
    """sRGB-encoded 0-1 (or uint8, scaled by 1/255) -> linear-light 0-1 (IEC 61966-2-1), same shape."""
    array = np.asarray(rgb)
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / np.float32(255.0)
    encoded: FloatArray = np.asarray(array, dtype=np.result_type(array.dtype, np.float32))
    return np.where(encoded <= 0.04045, encoded / 12.92, ((encoded + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(linear: FloatArray) -> FloatArray:
    """Linear-light -> sRGB-encoded, same shape and dtype; values outside 0-1 are not clipped here."""
    magnitude = np.abs(linear)
    encoded = np.where(magnitude <= 0.0031308, 12.92 * magnitude, 1.055 * magnitude ** (1 / 2.4) - 0.055)
    result: FloatArray = np.sign(linear) * encoded
    return result


def _matmul(matrix: npt.NDArray[np.float64], values: FloatArray) -> FloatArray:
    """`values @ matrix.T` in the dtype of `values` (float32 images stay float32)."""
    result: FloatArray = values @ matrix.T.astype(values.dtype)
    return result


def linear_to_oklab(linear: FloatArray) -> FloatArray:
    """Linear sRGB `...x3` -> OKLab `...x3` (Ottosson 2020); L is 1.0 for white."""
    return _matmul(_LMS_TO_OKLAB, np.cbrt(_matmul(_RGB_TO_LMS, linear)))


def xyz_to_oklab(xyz: FloatArray) -> FloatArray:
    """CIE XYZ (D65, Y of white = 1) `...x3` -> OKLab `...x3` (Ottosson 2020)."""
    return _matmul(_LMS_TO_OKLAB, np.cbrt(_matmul(_XYZ_TO_LMS, xyz)))


def oklab_to_linear(oklab: FloatArray) -> FloatArray:
    """OKLab `...x3` -> linear sRGB `...x3`; out-of-gamut colours come back outside 0-1, unclipped."""
    return _matmul(_LMS_TO_RGB, _matmul(_OKLAB_TO_LMS, oklab) ** 3)


def lab_to_oklab(lab: npt.ArrayLike) -> FloatArray:
    """CIELAB (D65) `...x3` -> OKLab `...x3`, through XYZ (`skimage.color.lab2xyz`), without clipping."""
    xyz: FloatArray = _skcolor.lab2xyz(np.asarray(lab, dtype=np.float64))
    return xyz_to_oklab(xyz)


def oklab_to_oklch(oklab: FloatArray) -> FloatArray:
    """OKLab `...x3` -> OKLCh `...x3`: L, chroma C = hypot(a, b), hue h in degrees 0-360."""
    hue = np.degrees(np.arctan2(oklab[..., 2], oklab[..., 1])) % 360.0
    return np.stack([oklab[..., 0], np.hypot(oklab[..., 1], oklab[..., 2]), hue], axis=-1)


def oklch_to_oklab(oklch: FloatArray) -> FloatArray:
    """OKLCh `...x3` (hue in degrees) -> OKLab `...x3`."""
    hue = np.radians(oklch[..., 2])
    chroma = oklch[..., 1]
    return np.stack([oklch[..., 0], chroma * np.cos(hue), chroma * np.sin(hue)], axis=-1)


def hue_difference(h1: npt.ArrayLike, h2: npt.ArrayLike) -> FloatArray:
    """Signed shortest turn from hue `h2` to hue `h1`, degrees in [-180, 180): 350° vs 10° is -20°."""
    difference: FloatArray = (np.asarray(h1) - np.asarray(h2) + 180.0) % 360.0 - 180.0
    return difference
