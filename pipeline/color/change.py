"""Where an edit changed the image: a CIEDE2000 map between baseline and output, thresholded and cleaned.

Issue 20, step 1. Both images are smoothed lightly (a Gaussian of `SMOOTHING_SIGMA` px on CIELAB), so
pixel noise and the VAE's noise floor stay under the threshold. The map is thresholded at
max(`MIN_THRESHOLD`, Otsu), with hysteresis: pixels above that seed the region, and it grows through
connected pixels above `MIN_THRESHOLD`. A strong recolour puts Otsu far above 6, and without the growth
the shaded side of the object, whose ΔE00 is smaller, would be lost. The region is then opened and
closed with a disk, holes smaller than `MIN_COMPONENT` of the image are filled and components smaller
than that are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import skimage.filters
import skimage.measure
import skimage.morphology

from pipeline.color.spaces import FloatArray, delta_e00

_filters: Any = skimage.filters  # unannotated functions; see spaces.py
_measure: Any = skimage.measure
_morphology: Any = skimage.morphology

BoolMask = npt.NDArray[np.bool_]

SMOOTHING_SIGMA = 1.0  # px: removes pixel noise, keeps the edges of a product to about a pixel
MIN_THRESHOLD = 6.0  # ΔE00: issue 20; above the VAE round trip's floor, below any deliberate recolour
MIN_COMPONENT = 0.0005  # of the image area: changes (or holes) smaller than this are noise, not edits
NO_CHANGE_BELOW = 0.002  # changed fraction: issue 20 (0.2 %)
GLOBAL_CHANGE_ABOVE = 0.60  # changed fraction: issue 20 (60 %)


@dataclass(frozen=True)
class ChangeMap:
    """The change between a baseline and an output of H x W pixels.

    `delta_e`: float32 HxW, CIEDE2000 (kL = 1) between the smoothed images. `mask`: bool HxW, the
    changed region. `threshold`: max(6, Otsu), the ΔE00 that seeds the region (it grows through pixels
    above 6). `fraction`: mask pixels / all pixels.
    """

    delta_e: FloatArray
    mask: BoolMask
    threshold: float
    fraction: float

    @property
    def no_change_detected(self) -> bool:
        return self.fraction < NO_CHANGE_BELOW

    @property
    def global_change(self) -> bool:
        return self.fraction > GLOBAL_CHANGE_ABOVE


def smooth_lab(lab: FloatArray) -> FloatArray:
    """CIELAB HxWx3 -> the same, each channel blurred by a Gaussian of `SMOOTHING_SIGMA` px."""
    return gaussian_blur(lab, SMOOTHING_SIGMA)


def gaussian_blur(image: FloatArray, sigma: float) -> FloatArray:
    """A float HxW (or HxWxC, channels apart) image blurred by a Gaussian of `sigma` px, same dtype."""
    channel_axis = -1 if image.ndim == 3 else None
    blurred: FloatArray = _filters.gaussian(
        image, sigma=sigma, channel_axis=channel_axis, preserve_range=True, mode="nearest"
    )
    return blurred.astype(image.dtype, copy=False)


def morphology_radius(shape: tuple[int, ...]) -> int:
    """The disk radius in px for opening and closing: 1 px up to ~0.4 MP, 2 px at 1 MP, 4 px at 4 MP."""
    return max(1, round(min(shape[0], shape[1]) / 500))


def detect_change(baseline_lab: FloatArray, output_lab: FloatArray) -> ChangeMap:
    """The changed region between two smoothed CIELAB images HxWx3 (`smooth_lab`), as a `ChangeMap`."""
    delta_e = delta_e00(baseline_lab, output_lab).astype(np.float32, copy=False)
    threshold = max(MIN_THRESHOLD, float(_filters.threshold_otsu(delta_e)))
    mask = clean_mask(_filters.apply_hysteresis_threshold(delta_e, MIN_THRESHOLD, threshold))
    return ChangeMap(delta_e=delta_e, mask=mask, threshold=threshold, fraction=float(mask.mean()))


def clean_mask(raw: BoolMask) -> BoolMask:
    """A thresholded map -> the changed region: opened, closed, small holes filled, specks dropped."""
    disk = _morphology.disk(morphology_radius(raw.shape))
    mask: BoolMask = _morphology.opening(raw, disk)
    mask = _morphology.closing(mask, disk)
    min_pixels = max(16, round(MIN_COMPONENT * raw.size))
    mask = ~drop_small_components(~mask, min_pixels, keep_border=True)
    return drop_small_components(mask, min_pixels, keep_border=False)


def drop_small_components(mask: BoolMask, min_pixels: int, *, keep_border: bool) -> BoolMask:
    """`mask` without its 8-connected components of fewer than `min_pixels` pixels.

    With `keep_border`, components touching the image border stay whatever their size (used on the
    inverted mask, where a small component away from the border is a hole).
    """
    labels: npt.NDArray[np.intp] = _measure.label(mask, connectivity=2)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_pixels
    if keep_border:
        edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
        keep[np.unique(edge)] = True
    keep[0] = False  # label 0 is the background of `mask`
    kept: BoolMask = keep[labels]
    return kept
