"""Mapping OKLCh colours into the sRGB gamut: CSS Color 4's binary search on chroma, vectorised.

The method is CSS Color Module Level 4, section 13.2.2 "CSS Gamut Mapping to an RGB Destination"
(https://www.w3.org/TR/css-color-4/#binsearch): keep lightness and hue, bisect chroma, and stop as soon as
the clipped colour is within JND = 0.02 (deltaEOK, Euclidean OKLab distance) of the chroma-reduced one.
It is written here because the libraries that have it (coloraide, colorjs) work one colour at a time.
"""

from __future__ import annotations

import numpy as np

from pipeline.color.spaces import FloatArray, linear_to_oklab, oklab_to_linear, oklch_to_oklab

JND = 0.02  # deltaEOK below which a clipped colour counts as the same colour (CSS Color 4)
EPSILON = 0.0001  # chroma resolution of the bisection (CSS Color 4)
_IN_GAMUT_TOLERANCE = 1e-6  # float32 round-trip error of in-gamut colours, in linear 0-1 units
_MAX_STEPS = 24  # chroma <= 0.5 halves to below EPSILON in 13 steps; the loop also stops when all are done


def in_srgb_gamut(linear: FloatArray) -> np.ndarray:
    """Linear sRGB `...x3` -> bool `...`: every channel within 0-1 (to float32 round-off)."""
    inside: np.ndarray = np.all(
        (linear >= -_IN_GAMUT_TOLERANCE) & (linear <= 1.0 + _IN_GAMUT_TOLERANCE), axis=-1
    )
    return inside


def _clip_with_distance(oklab: FloatArray) -> tuple[FloatArray, FloatArray]:
    """The clipped linear sRGB of OKLab colours `Nx3` and its deltaEOK to them `N`."""
    clipped = np.clip(oklab_to_linear(oklab), 0.0, 1.0)
    distance: FloatArray = np.linalg.norm(linear_to_oklab(clipped) - oklab, axis=-1)
    return clipped, distance


def oklch_to_srgb_linear(oklch: FloatArray) -> FloatArray:
    """OKLCh `...x3` -> linear sRGB `...x3` within 0-1, out-of-gamut colours mapped by CSS Color 4.

    In-gamut colours convert exactly; L >= 1 gives white and L <= 0 black, as the CSS algorithm says.
    """
    shape = oklch.shape
    lch = oklch.reshape(-1, 3)
    linear = oklab_to_linear(oklch_to_oklab(lch))
    result = np.clip(linear, 0.0, 1.0)
    todo = ~in_srgb_gamut(linear) & (lch[:, 0] > 0.0) & (lch[:, 0] < 1.0)
    result[lch[:, 0] >= 1.0] = 1.0
    result[lch[:, 0] <= 0.0] = 0.0
    if np.any(todo):
        result[todo] = _binary_search(lch[todo])
    return result.reshape(shape)


def _binary_search(lch: FloatArray) -> FloatArray:
    """CSS Color 4 section 13.2.2 steps for `Nx3` out-of-gamut OKLCh colours, all at once."""
    clipped, distance = _clip_with_distance(oklch_to_oklab(lch))
    done = distance < JND  # the clipped colour is already close enough
    low = np.zeros(len(lch), dtype=lch.dtype)
    high = lch[:, 1].copy()
    low_in_gamut = np.ones(len(lch), dtype=bool)
    current = lch.copy()
    for _ in range(_MAX_STEPS):
        active = ~done & (high - low > EPSILON)
        if not np.any(active):
            break
        chroma = (low + high) / 2
        current[:, 1] = np.where(active, chroma, current[:, 1])
        current_lab = oklch_to_oklab(current)
        inside = in_srgb_gamut(oklab_to_linear(current_lab))
        raise_low = active & low_in_gamut & inside
        low = np.where(raise_low, chroma, low)
        test = active & ~raise_low
        if np.any(test):
            step_clipped, step_distance = _clip_with_distance(current_lab[test])
            clipped[test] = step_clipped
            close = np.zeros(len(lch), dtype=bool)
            close[test] = step_distance < JND
            finished = np.zeros(len(lch), dtype=bool)
            finished[test] = (step_distance < JND) & (JND - step_distance < EPSILON)
            done |= finished
            keep_going = close & ~finished
            low_in_gamut &= ~keep_going
            low = np.where(keep_going, chroma, low)
            high = np.where(test & ~close, chroma, high)
    return clipped
