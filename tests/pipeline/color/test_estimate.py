"""The colour a region came out in, against renders of known albedo; the split between targets."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.color.estimate import ambiguous_targets, estimate_color, split_by_hue
from pipeline.color.measure import measure_recolor
from pipeline.color.report import ColorTarget
from pipeline.color.scenes import Garment, render_product
from pipeline.color.spaces import delta_e00, hex_to_lab, srgb_to_lab

CHROMATIC = [
    "#1E90FF",
    "#D62828",
    "#2A9D8F",
    "#F4D35E",
    "#6A4C93",
    "#FF7F11",
    "#0B3D91",
    "#8FBC8F",
    "#C8306E",
]
NEAR_BLACK = ["#1A1A1A", "#222222", "#101010"]
LIGHTS = [(-0.35, -0.45), (0.0, 0.0), (0.6, -0.2)]
SPECULAR = [0.15, 0.8]


def measured_error(color: str, light: tuple[float, float], specular: float, seed: int) -> float:
    """ΔE00 between the albedo of a rendered recolour and what the colour check reads (kL = 1)."""
    baseline = render_product(
        [Garment("#8A8A8A")], size=(256, 256), light=light, specular=specular, seed=seed
    )
    output = render_product(
        [Garment(color)], size=(256, 256), light=light, specular=specular, seed=seed, noise_seed=seed + 7
    )
    report = measure_recolor(baseline.image, output.image, [ColorTarget("shirt", color)])
    delta_e = report.targets[0].delta_e
    assert delta_e is not None
    return delta_e


@pytest.mark.parametrize("color", CHROMATIC)
def test_chromatic_albedo_within_1_5(color: str) -> None:
    errors = [
        measured_error(color, light, specular, seed)
        for seed, light in enumerate(LIGHTS)
        for specular in SPECULAR
    ]
    assert max(errors) <= 1.5, errors


@pytest.mark.parametrize("color", NEAR_BLACK)
def test_near_black_albedo_within_1_0(color: str) -> None:
    errors = [
        measured_error(color, light, specular, seed)
        for seed, light in enumerate(LIGHTS)
        for specular in SPECULAR
    ]
    assert max(errors) <= 1.0, errors


def test_a_median_misses_what_the_estimate_finds() -> None:
    """The renders are shaded as product photos are: a plain median misses a perfect recolour."""
    render = render_product([Garment("#1E90FF")], size=(256, 256))
    lab = srgb_to_lab(render.image)[render.objects[0] & ~render.logos[0]]
    truth = hex_to_lab("#1E90FF")
    assert float(delta_e00(np.median(lab, axis=0), truth)) > 3.0
    estimate = estimate_color(lab)
    assert estimate is not None
    assert float(delta_e00(estimate, truth)) <= 1.5


def test_too_few_pixels_give_no_estimate() -> None:
    assert estimate_color(np.tile([50.0, 20.0, 20.0], (5, 1))) is None


def test_split_by_nearest_hue_wraps_around_zero() -> None:
    requested = np.stack([hex_to_lab("#C8306E"), hex_to_lab("#2A9D8F")])  # hue about 1° and 190°
    pixels = np.array([[45.0, 60.0, -4.0], [45.0, 60.0, 4.0], [50.0, -30.0, -3.0]])  # 356°, 4°, 186°
    assert split_by_hue(pixels, requested).tolist() == [0, 0, 1]


def test_split_sends_grey_pixels_to_an_achromatic_target() -> None:
    requested = np.stack([hex_to_lab("#1A1A1A"), hex_to_lab("#1E90FF")])
    pixels = np.array([[8.0, 0.5, -0.5], [55.0, 8.0, -55.0], [15.0, 2.0, -14.0]])
    assert split_by_hue(pixels, requested).tolist() == [0, 1, 1]


def test_close_requested_colours_are_ambiguous() -> None:
    close = np.stack([hex_to_lab("#1E90FF"), hex_to_lab("#2A85F0"), hex_to_lab("#D62828")])
    assert ambiguous_targets(close).tolist() == [True, True, False]
