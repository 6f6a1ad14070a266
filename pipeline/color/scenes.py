"""Synthetic product renders with a known colour, for the tests and `pipeline/tools/color_bench.py`.

Each object is an ellipsoid lit in linear light: albedo x shading (Lambert with ambient, soft folds) x
texture (fabric grain and weave, a little per-channel fibre colour), plus a white Blinn-Phong specular,
with an optional white logo printed on it, antialiased edges, over a grey studio sweep, encoded to sRGB
with sensor noise and 8-bit rounding. The albedo is the truth a colour estimate is scored against: it is
what the object's colour would read under full, direct light.

`recolor_region` recolours part of a real photo instead (as a model would: new hue, chroma and
lightness, the same shading and texture), and `offset_color` makes a colour a given CIEDE2000 away from
another, to inject errors of known size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from pipeline.color.change import BoolMask, gaussian_blur
from pipeline.color.gamut import in_srgb_gamut
from pipeline.color.measure import lab_to_hex
from pipeline.color.spaces import (
    FloatArray,
    delta_e00,
    hex_to_lab,
    lab_to_oklab,
    linear_to_oklab,
    linear_to_srgb,
    oklab_to_linear,
    oklab_to_oklch,
    oklch_to_oklab,
    parse_hex,
    srgb_to_linear,
)

LOGO_ALBEDO = 0.80  # linear; sRGB about 231: a white print that is not paper-white
_BACKGROUND = 0.45  # linear; sRGB about 177 at the top of the sweep


@dataclass(frozen=True)
class Garment:
    """One object of a render: its albedo `color` (#RRGGBB), centre and radii as fractions of the
    image's width and height, and whether a white logo is printed on it."""

    color: str
    center: tuple[float, float] = (0.5, 0.55)
    radii: tuple[float, float] = (0.30, 0.36)
    logo: bool = True


@dataclass(frozen=True)
class Render:
    """A rendered image (uint8 HxWx3) and, per garment, bool HxW masks of where it covers at least half
    a pixel (`objects`, logo included) and of its logo (`logos`, empty without one)."""

    image: npt.NDArray[np.uint8]
    objects: tuple[BoolMask, ...] = field(repr=False)
    logos: tuple[BoolMask, ...] = field(repr=False)


def render_product(
    garments: tuple[Garment, ...] | list[Garment],
    *,
    size: tuple[int, int] = (512, 512),
    light: tuple[float, float] = (-0.35, -0.45),
    specular: float = 0.45,
    seed: int = 0,
    noise_seed: int = 1,
    noise: float = 1.2,
) -> Render:
    """Renders `garments` (painted in order) at `size` (width, height) px.

    `light`: the light's (x, y) direction towards the viewer's upper left; z completes a unit vector.
    `specular`: the highlight's peak in linear units. `seed` fixes the product (texture, folds, logo
    placement): a baseline and an output of one product share it. `noise_seed` fixes the sensor noise,
    `noise` its standard deviation in 8-bit levels.
    """
    width, height = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    background = _BACKGROUND * (1.0 - 0.35 * yy / height)[..., None] * np.ones(3, dtype=np.float32)
    linear = background
    grain = _grain(rng, (height, width))
    objects, logos = [], []
    lx, ly = light
    light_vector = np.array([lx, ly, np.sqrt(max(0.05, 1 - lx * lx - ly * ly))], dtype=np.float32)
    light_vector /= np.linalg.norm(light_vector)
    half = light_vector + np.array([0, 0, 1], dtype=np.float32)
    half /= np.linalg.norm(half)
    for garment in garments:
        cx, cy = garment.center[0] * width, garment.center[1] * height
        rx, ry = garment.radii[0] * width, garment.radii[1] * height
        u, v = (xx - cx) / rx, (yy - cy) / ry
        radius = np.sqrt(u * u + v * v)
        coverage = np.clip((1.0 - radius) * min(rx, ry) + 0.5, 0.0, 1.0)  # about one pixel of ramp
        z = np.sqrt(np.clip(1.0 - radius * radius, 0.0, 1.0))
        normal = np.stack([u, v, z], axis=-1)
        normal /= np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-6)
        lambert = np.clip(normal @ light_vector, 0.0, 1.0)
        phase = rng.uniform(0, 2 * np.pi)
        folds = 1.0 - 0.12 * np.clip(np.sin(3 * np.pi * (0.8 * u + 0.3 * v) + phase), 0.0, 1.0) ** 2
        shading = (0.4 + 0.6 * lambert) * folds
        albedo = np.broadcast_to(
            srgb_to_linear(np.array(parse_hex(garment.color), np.uint8)), (*shading.shape, 3)
        )
        logo = np.zeros((height, width), dtype=bool)
        if garment.logo:
            logo = _logo_mask(u, v, rng)
            albedo = np.where(logo[..., None], np.float32(LOGO_ALBEDO), albedo)
        fibre = 1.0 + 0.01 * rng.standard_normal((height, width, 3)).astype(np.float32)
        diffuse = albedo * (shading * grain)[..., None] * fibre
        highlight = specular * np.clip(normal @ half, 0.0, 1.0) ** 60 * (z > 0)
        surface = diffuse + highlight[..., None]
        linear = linear * (1 - coverage[..., None]) + surface * coverage[..., None]
        objects.append(coverage >= 0.5)
        logos.append(logo & (coverage >= 0.5))
    encoded = linear_to_srgb(np.clip(linear, 0.0, 1.0)) * 255.0
    sensor = np.random.default_rng(noise_seed).standard_normal(encoded.shape).astype(np.float32) * noise
    image = np.clip(np.rint(encoded + sensor), 0, 255).astype(np.uint8)
    return Render(image=image, objects=tuple(objects), logos=tuple(logos))


def _grain(rng: np.random.Generator, shape: tuple[int, int]) -> FloatArray:
    """Fabric texture, a multiplier around 1: a 2-px weave (±2 %) and a smoothed grain (±4 %)."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    weave = 0.02 * np.sin(np.pi * xx) * np.sin(np.pi * yy + 0.5)
    noise = gaussian_blur(rng.standard_normal(shape).astype(np.float32), 1.0)
    noise *= 0.04 / max(float(noise.std()), 1e-6)
    grain: FloatArray = 1.0 + weave + noise
    return grain


def _logo_mask(u: FloatArray, v: FloatArray, rng: np.random.Generator) -> BoolMask:
    """A chest print in the object's own coordinates: a ring and three bars, about 4 % of the object."""
    cu, cv = rng.uniform(-0.25, 0.0), rng.uniform(-0.35, -0.15)
    du, dv = u - cu, v - cv
    ring = np.abs(np.hypot(du, dv) - 0.11) < 0.025
    bars = (du > 0.16) & (du < 0.42) & (np.abs(dv) < 0.09) & (np.sin(du * 60) > -0.2)
    mask: BoolMask = ring | bars
    return mask


def recolor_region(
    image: npt.NDArray[np.uint8], region: BoolMask, color: str, *, feather: float = 1.0
) -> npt.NDArray[np.uint8]:
    """`image` (uint8 HxWx3) with `region` recoloured to `color` as an editor would, keeping the shading:
    OKLab lightness is scaled so that the region's upper lightness (90th percentile) becomes the
    colour's, hue becomes the colour's, and chroma follows each pixel's lightness relative to the
    colour's; out-of-gamut results are clipped. `feather` blurs the region's edge by that many px."""
    target = oklab_to_oklch(lab_to_oklab(hex_to_lab(color)))
    oklab = linear_to_oklab(srgb_to_linear(image))
    reference = max(float(np.percentile(oklab[region, 0], 90)), 1e-3)
    lightness = oklab[..., 0] * (float(target[0]) / reference)
    chroma = target[1] * np.clip(lightness / max(float(target[0]), 1e-3), 0.3, 1.5)
    recolored = oklch_to_oklab(np.stack([lightness, chroma, np.full_like(lightness, target[2])], axis=-1))
    weight = region.astype(np.float32)
    if feather > 0:
        weight = gaussian_blur(weight, feather)
    mixed = oklab + weight[..., None] * (recolored - oklab)
    encoded = linear_to_srgb(np.clip(oklab_to_linear(mixed), 0.0, 1.0)) * 255.0
    return np.where(weight[..., None] > 0, np.rint(encoded), image).astype(np.uint8)


def add_noise(image: npt.NDArray[np.uint8], *, sigma: float, seed: int) -> npt.NDArray[np.uint8]:
    """`image` with Gaussian noise of `sigma` 8-bit levels per channel, rounded and clipped."""
    noise = np.random.default_rng(seed).standard_normal(image.shape) * sigma
    return np.clip(np.rint(image + noise), 0, 255).astype(np.uint8)


def offset_color(color: str, delta_e: float, *, seed: int, tolerance: float = 0.25) -> str:
    """A #RRGGBB at CIEDE2000 `delta_e` (kL = 1) from `color`, within `tolerance` after 8-bit rounding,
    in a direction drawn from `seed` (a mix of lightness, chroma and hue): an injected error of known
    size. Raises `ValueError` when 50 directions give no in-gamut colour that close."""
    requested = hex_to_lab(color)
    rng = np.random.default_rng(seed)
    for _ in range(50):
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        low, high = 0.0, 80.0
        for _ in range(50):
            middle = (low + high) / 2
            if float(delta_e00(requested, requested + middle * direction)) < delta_e:
                low = middle
            else:
                high = middle
        candidate = requested + high * direction
        if not in_srgb_gamut(oklab_to_linear(lab_to_oklab(candidate))):
            continue
        rounded = lab_to_hex(candidate)
        if abs(float(delta_e00(requested, hex_to_lab(rounded))) - delta_e) <= tolerance:
            return rounded
    raise ValueError(f"no in-gamut colour at ΔE00 {delta_e} from {color}")
