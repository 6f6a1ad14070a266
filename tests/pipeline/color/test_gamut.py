"""CSS Color 4 gamut mapping: the vectorised version against a line-by-line transcription of the spec."""

from __future__ import annotations

import numpy as np

from pipeline.color.gamut import EPSILON, JND, in_srgb_gamut, oklch_to_srgb_linear
from pipeline.color.spaces import (
    linear_to_oklab,
    oklab_to_linear,
    oklab_to_oklch,
    oklch_to_oklab,
    srgb_to_linear,
)


def css_color_4_reference(lch: np.ndarray) -> np.ndarray:
    """One colour at a time, as https://www.w3.org/TR/css-color-4/#binsearch writes the steps."""

    def linear(color: np.ndarray) -> np.ndarray:
        return oklab_to_linear(oklch_to_oklab(color))

    def clip(color: np.ndarray) -> np.ndarray:
        clipped: np.ndarray = np.clip(linear(color), 0.0, 1.0)
        return clipped

    def delta(clipped: np.ndarray, color: np.ndarray) -> float:
        return float(np.linalg.norm(linear_to_oklab(clipped) - oklch_to_oklab(color)))

    if lch[0] >= 1.0:
        return np.ones(3)
    if lch[0] <= 0.0:
        return np.zeros(3)
    if in_srgb_gamut(linear(lch)):
        return linear(lch)
    current = lch.copy()
    clipped = clip(current)
    if delta(clipped, current) < JND:
        return clipped
    low, high, low_in_gamut = 0.0, float(lch[1]), True
    while high - low > EPSILON:
        chroma = (low + high) / 2
        current[1] = chroma
        if low_in_gamut and in_srgb_gamut(linear(current)):
            low = chroma
            continue
        clipped = clip(current)
        error = delta(clipped, current)
        if error < JND:
            if JND - error < EPSILON:
                return clipped
            low_in_gamut = False
            low = chroma
        else:
            high = chroma
    return clipped


def test_in_gamut_colours_are_unchanged() -> None:
    linear = srgb_to_linear(np.random.default_rng(1).integers(0, 256, (500, 3), dtype=np.uint8)).astype(
        np.float64
    )
    mapped = oklch_to_srgb_linear(oklab_to_oklch(linear_to_oklab(linear)))
    np.testing.assert_allclose(mapped, linear, atol=1e-6)


def test_out_of_gamut_colours_match_the_spec_steps() -> None:
    rng = np.random.default_rng(2)
    lch = np.stack(
        [rng.uniform(0.05, 0.98, 400), rng.uniform(0.1, 0.45, 400), rng.uniform(0, 360, 400)], axis=-1
    )
    lch = np.concatenate([lch, [[1.2, 0.1, 30.0], [-0.1, 0.1, 30.0], [0.6, 0.4, 359.9]]])
    mapped = oklch_to_srgb_linear(lch)
    expected = np.stack([css_color_4_reference(color) for color in lch])
    assert np.all((mapped >= 0.0) & (mapped <= 1.0))
    np.testing.assert_allclose(mapped, expected, atol=1e-6)
    assert np.count_nonzero(~in_srgb_gamut(oklab_to_linear(oklch_to_oklab(lch)))) > 300
