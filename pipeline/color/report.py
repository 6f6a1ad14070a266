"""The typed results of the colour check: what was asked, what came out, what was kept, what was corrected.

Every result is a frozen dataclass with a `to_dict()` that is JSON-able and deterministic: floats are
rounded to `DECIMALS` places, so the same inputs give the same JSON text. Pixel arrays (the changed
region, the per-target split, the maps) ride along for the caller and for `correct_recolor`, but are
never serialised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.color.change import BoolMask
from pipeline.color.spaces import FloatArray

DECIMALS = 4
Lab = tuple[float, float, float]


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), DECIMALS)


def _round_lab(lab: Lab | None) -> list[float] | None:
    return None if lab is None else [round(float(v), DECIMALS) for v in lab]


@dataclass(frozen=True)
class ColorTarget:
    """One entry of a request's `recolor` list: the `target` it names and the `color` (#RRGGBB) asked for."""

    target: str
    color: str


@dataclass(frozen=True)
class TargetMeasurement:
    """The colour one target came out in (issue 20, steps 2 and 6).

    `requested_lab` / `achieved_lab`: CIELAB (D65). `achieved_hex`: the achieved colour mapped into sRGB
    (CSS Color 4), for people to look at. `delta_e`: CIEDE2000 with the report's kL between requested and
    achieved. `pixels`: changed pixels assigned to this target. The achieved fields and `delta_e` are
    None when no usable pixels were found (no change detected, or the split gave this target too few).
    `ambiguous`: another requested colour lies within ΔE00 10, so this target was measured on the pixels
    of both. `passed`: `delta_e` is known and at most the report's `max_delta_e`.
    """

    target: str
    requested_hex: str
    requested_lab: Lab
    achieved_hex: str | None
    achieved_lab: Lab | None
    delta_e: float | None
    pixels: int
    ambiguous: bool
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "requested_hex": self.requested_hex,
            "requested_lab": _round_lab(self.requested_lab),
            "achieved_hex": self.achieved_hex,
            "achieved_lab": _round_lab(self.achieved_lab),
            "delta_e": _round(self.delta_e),
            "pixels": self.pixels,
            "ambiguous": self.ambiguous,
            "passed": self.passed,
        }


@dataclass(frozen=True)
class Preservation:
    """How well the rest of the image was kept (issue 20, step 4), against the baseline, over the pixels
    outside the changed region and a margin of `change.morphology_radius + 2` px around it.

    `delta_e_mean`, `delta_e_p95`: CIEDE2000 (kL = 1) between the lightly smoothed images (Gaussian,
    1 px), mean and 95th percentile. `ssim_l`: mean SSIM of CIELAB L* (scikit-image's
    `structural_similarity`, 7x7 window, data range 100). All None when no pixel lies outside.
    """

    delta_e_mean: float | None
    delta_e_p95: float | None
    ssim_l: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "delta_e_mean": _round(self.delta_e_mean),
            "delta_e_p95": _round(self.delta_e_p95),
            "ssim_l": _round(self.ssim_l),
        }


@dataclass(frozen=True)
class ColorReport:
    """The colour check of one output (issue 20, steps 1, 2, 4 and 6).

    `changed_fraction`: the changed region's share of the image, 0-1. `threshold`: the ΔE00 the change
    map was cut at, max(6, Otsu). `no_change_detected`: under 0.2 % changed. `global_change`: over 60 %
    changed. `kl`: the kL of the per-target ΔE00. `max_delta_e`: the gate. `passed` (property): every
    target passed; a report with no change detected never passes.

    Not serialised: `mask` (bool HxW, the changed region), `regions` (int16 HxW, the index of the target
    each changed pixel was assigned to, -1 elsewhere), `delta_e_map` (float32 HxW, ΔE00 kL = 1 between
    the smoothed images) and `ssim_map` (float32 HxW, SSIM of L*).
    """

    changed_fraction: float
    threshold: float
    no_change_detected: bool
    global_change: bool
    targets: tuple[TargetMeasurement, ...]
    preservation: Preservation
    kl: float
    max_delta_e: float
    mask: BoolMask = field(repr=False, compare=False)
    regions: npt.NDArray[np.int16] = field(repr=False, compare=False)
    delta_e_map: FloatArray = field(repr=False, compare=False)
    ssim_map: FloatArray = field(repr=False, compare=False)

    @property
    def passed(self) -> bool:
        return bool(self.targets) and all(target.passed for target in self.targets)

    @property
    def worst_delta_e(self) -> float | None:
        """The largest per-target ΔE00, or None when any target could not be measured."""
        values = [target.delta_e for target in self.targets]
        if not values or any(value is None for value in values):
            return None
        return max(value for value in values if value is not None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "changed_fraction": _round(self.changed_fraction),
            "threshold": _round(self.threshold),
            "no_change_detected": self.no_change_detected,
            "global_change": self.global_change,
            "kl": self.kl,
            "max_delta_e": self.max_delta_e,
            "passed": self.passed,
            "targets": [target.to_dict() for target in self.targets],
            "preservation": self.preservation.to_dict(),
        }


@dataclass(frozen=True)
class CorrectionResult:
    """A correction's outcome (issue 20, step 3).

    `image`: uint8 HxWx3, or HxWx4 when the output had alpha (the alpha plane is the output's, byte for
    byte); the output itself when `applied` is False. `before`, `after`: the reports of the output and of
    the corrected image, measured on the same changed region (`after` is `before` when not applied).
    `ssim_l_region`: SSIM of L* between output and corrected image inside the changed region (None
    when nothing was tried); it reads structure kept, but SSIM's luminance term also falls with the
    lightness the correction meant to change (a 15 % lift of L* alone gives about 0.98). `reason`: one
    line on why the correction was kept or not.
    Not serialised: `feathered` (bool HxW), the pixels the correction may touch; all others are the
    output's bytes.
    """

    image: npt.NDArray[np.uint8] = field(repr=False, compare=False)
    before: ColorReport
    after: ColorReport
    applied: bool
    ssim_l_region: float | None
    reason: str
    feathered: BoolMask = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "reason": self.reason,
            "ssim_l_region": _round(self.ssim_l_region),
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
        }


def lab_tuple(lab: FloatArray) -> Lab:
    """A CIELAB array `(3,)` as a tuple of Python floats."""
    return float(lab[0]), float(lab[1]), float(lab[2])
