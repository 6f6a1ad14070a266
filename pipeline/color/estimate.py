"""What colour a region came out in, robustly under shading; and which changed pixels belong to which target.

Issue 20, step 2. A mean or median of a shaded object reads darker and greyer than its albedo (ΔE00 3-5
on a perfect recolour, issue 20), so the estimate factors shading out instead:

- Above CIELAB's linear toe, L*+16 and a*, b* are all proportional to Y^(1/3): a shading factor s in
  linear light scales them together by s^(1/3). The ratios a*/(L*+16) and b*/(L*+16) are therefore the
  same on every diffusely lit pixel of one albedo; the chromatic part of the estimate is their
  chroma-weighted mean over the well-lit half of the region.
- The lightness is read from the upper lightness (`LIGHTNESS_PERCENTILE`): the albedo is what the
  object shows where it faces the light.
- Highlights, deep shadows, and prints or stitching of another lightness are dropped first (L*+16
  outside `LIGHTNESS_BAND` times its median); on a chromatic region, so are pixels whose relative chroma
  C*/(L*+16) is under `RELATIVE_CHROMA_KEEP` of the median (white logos, specular sheen, grey seams).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from pipeline.color.spaces import FloatArray, delta_e00, hue_difference

MIN_PIXELS = 24  # fewer usable pixels than this and no colour is reported
LIGHTNESS_BAND = (0.55, 1.6)  # L*+16 relative to its median: outside is a deep shadow, a highlight or a print
RELATIVE_CHROMA_KEEP = 0.8  # of the median C*/(L*+16): below is a logo, sheen or seam
ACHROMATIC_CHROMA = 6.0  # C*ab: a region (or a requested colour) whose median chroma is below is achromatic
# Of the kept pixels' L*: where the object faces the light. An achromatic region reads lower, because a
# highlight on it cannot be told from the surface by its chroma, while its shading bias is small in L*.
LIGHTNESS_PERCENTILE = 95.0
ACHROMATIC_LIGHTNESS_PERCENTILE = 90.0
AMBIGUOUS_BELOW = 10.0  # ΔE00 between two requested colours: issue 20


def estimate_color(lab: FloatArray) -> FloatArray | None:
    """The albedo colour of a region from its (lightly smoothed) CIELAB pixels `Nx3`: CIELAB `(3,)`
    float64, or None when fewer than `MIN_PIXELS` pixels are usable. See the module docstring."""
    pixels = np.asarray(lab, dtype=np.float64).reshape(-1, 3)
    if len(pixels) < MIN_PIXELS:
        return None
    lum = pixels[:, 0] + 16.0
    median_lum = float(np.median(lum))
    kept = pixels[(lum >= LIGHTNESS_BAND[0] * median_lum) & (lum <= LIGHTNESS_BAND[1] * median_lum)]
    if len(kept) < MIN_PIXELS:
        return None
    lum = kept[:, 0] + 16.0
    chroma = np.hypot(kept[:, 1], kept[:, 2])
    chromatic = float(np.median(chroma)) >= ACHROMATIC_CHROMA
    if chromatic:
        relative = chroma / lum
        selected = relative >= RELATIVE_CHROMA_KEEP * float(np.median(relative))
        if np.count_nonzero(selected) >= MIN_PIXELS:
            kept, lum, chroma = kept[selected], lum[selected], chroma[selected]
    percentile = LIGHTNESS_PERCENTILE if chromatic else ACHROMATIC_LIGHTNESS_PERCENTILE
    lightness = float(np.percentile(kept[:, 0], percentile))
    upper = lum >= np.median(lum)
    weights = chroma[upper] if chromatic else np.ones(np.count_nonzero(upper))
    ratio_a = float(np.average(kept[upper, 1] / lum[upper], weights=weights))
    ratio_b = float(np.average(kept[upper, 2] / lum[upper], weights=weights))
    return np.array([lightness, ratio_a * (lightness + 16.0), ratio_b * (lightness + 16.0)])


def is_achromatic(lab: FloatArray) -> bool:
    """Whether a CIELAB colour `(3,)` has too little chroma for its hue to mean anything."""
    return float(np.hypot(lab[1], lab[2])) < ACHROMATIC_CHROMA


def split_by_hue(lab: FloatArray, requested: FloatArray) -> npt.NDArray[np.intp]:
    """Assigns each pixel of `lab` `Nx3` to one of the requested CIELAB colours `Kx3`: index array `N`.

    Chromatic pixels go to the chromatic requested colour nearest in hue (on the circle: 355° is 10°
    from 5°); pixels of under `ACHROMATIC_CHROMA` go to the achromatic requested colour nearest in L*.
    Where the request has no colour of a pixel's kind, its nearest colour of the other kind by the rule
    of that kind takes it (hue when every requested colour is chromatic, L* when none is).
    """
    requested = np.asarray(requested, dtype=np.float64).reshape(-1, 3)
    pixels = np.asarray(lab).reshape(-1, 3)
    achromatic_targets = np.array([is_achromatic(color) for color in requested])
    pixel_hue = np.degrees(np.arctan2(pixels[:, 2], pixels[:, 1]))
    target_hue = np.degrees(np.arctan2(requested[:, 2], requested[:, 1]))
    hue_distance = np.abs(hue_difference(pixel_hue[:, None], target_hue[None, :]))
    lightness_distance = np.abs(pixels[:, :1] - requested[None, :, 0])
    by_hue = np.argmin(np.where(achromatic_targets[None, :], np.inf, hue_distance), axis=1)
    by_lightness = np.argmin(np.where(achromatic_targets[None, :], lightness_distance, np.inf), axis=1)
    assigned: npt.NDArray[np.intp]
    if achromatic_targets.all():
        assigned = np.argmin(lightness_distance, axis=1)
    elif not achromatic_targets.any():
        assigned = by_hue
    else:
        pixel_achromatic = np.hypot(pixels[:, 1], pixels[:, 2]) < ACHROMATIC_CHROMA
        assigned = np.where(pixel_achromatic, by_lightness, by_hue)
    return assigned


def ambiguous_targets(requested: FloatArray) -> npt.NDArray[np.bool_]:
    """For requested CIELAB colours `Kx3`: whether each lies within ΔE00 (kL = 1) `AMBIGUOUS_BELOW` of
    another, so that the split by hue cannot tell their pixels apart (bool `K`)."""
    requested = np.asarray(requested, dtype=np.float64).reshape(-1, 3)
    distance = delta_e00(requested[:, None, :], requested[None, :, :])
    np.fill_diagonal(distance, np.inf)
    return np.asarray((distance < AMBIGUOUS_BELOW).any(axis=1), dtype=bool)
