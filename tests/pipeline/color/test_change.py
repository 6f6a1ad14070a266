"""Where an edit changed the image: the mask against known truth, on synthetic renders and a real photo."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import skimage.data

from pipeline.color.change import MIN_THRESHOLD, ChangeMap, detect_change, smooth_lab
from pipeline.color.scenes import Garment, add_noise, recolor_region, render_product
from pipeline.color.spaces import srgb_to_lab

_data: Any = skimage.data  # unannotated functions


def change_between(baseline: np.ndarray, output: np.ndarray) -> ChangeMap:
    return detect_change(smooth_lab(srgb_to_lab(baseline)), smooth_lab(srgb_to_lab(output)))


def iou(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.count_nonzero(found & truth) / np.count_nonzero(found | truth))


def coffee_region() -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's coffee() (CC0) and an irregular region over the cup, saucer and table."""
    photo = _data.coffee()
    height, width = photo.shape[:2]
    yy, xx = np.mgrid[0:height, 0:width]
    cup = ((xx - 300) / 150) ** 2 + ((yy - 200) / 110) ** 2 < 1
    notch = ((xx - 420) / 60) ** 2 + ((yy - 120) / 50) ** 2 < 1
    return photo, (cup & ~notch) | ((xx > 40) & (xx < 140) & (yy > 250) & (yy < 380))


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("#8A8A8A", "#1E90FF"),
        ("#D62828", "#1E90FF"),
        ("#2A9D8F", "#D62828"),
        ("#F5F5DC", "#1A1A1A"),
        ("#FFFFFF", "#F4D35E"),
    ],
)
@pytest.mark.parametrize("light", [(-0.35, -0.45), (0.6, -0.2)])
def test_mask_matches_the_recoloured_object(before: str, after: str, light: tuple[float, float]) -> None:
    baseline = render_product([Garment(before)], size=(320, 320), light=light, noise_seed=1)
    output = render_product([Garment(after)], size=(320, 320), light=light, noise_seed=2)
    change = change_between(baseline.image, output.image)
    truth = baseline.objects[0] & ~baseline.logos[0]  # the white print keeps its colour
    assert iou(change.mask, truth) >= 0.90
    assert change.threshold >= MIN_THRESHOLD
    assert not change.no_change_detected
    assert not change.global_change


@pytest.mark.parametrize("color", ["#1E90FF", "#2A9D8F", "#1A1A1A", "#F4D35E", "#6A4C93"])
def test_mask_on_a_recoloured_photo(color: str) -> None:
    photo, region = coffee_region()
    baseline = add_noise(photo, sigma=2.0, seed=1)  # a VAE round trip's noise floor, roughly
    output = add_noise(recolor_region(photo, region, color), sigma=2.0, seed=2)
    assert iou(change_between(baseline, output).mask, region) >= 0.90


def test_noise_alone_is_no_change() -> None:
    render = render_product([Garment("#1E90FF")], size=(320, 320), noise_seed=1)
    again = render_product([Garment("#1E90FF")], size=(320, 320), noise_seed=2)
    assert change_between(render.image, again.image).no_change_detected
    photo = _data.coffee()
    change = change_between(add_noise(photo, sigma=3.0, seed=1), add_noise(photo, sigma=3.0, seed=2))
    assert change.no_change_detected
    assert change.threshold == MIN_THRESHOLD


def test_identical_images_are_no_change() -> None:
    photo = _data.coffee()
    change = change_between(photo, photo)
    assert change.fraction == 0.0
    assert change.no_change_detected


def test_a_change_of_most_of_the_image_is_global() -> None:
    photo, _ = coffee_region()
    everything = np.ones(photo.shape[:2], dtype=bool)
    change = change_between(photo, recolor_region(photo, everything, "#1E90FF"))
    assert change.global_change
