"""Correcting a recolour that missed: per target, rotate hue, scale chroma and bound lightness in OKLCh.

Issue 20, step 3. For each target whose achieved colour A misses the requested colour R:

- The transform works in OKLab, where a shading factor s in linear light scales L, a and b together by
  s^(1/3) (Ottosson's cube root of LMS). Lightness is scaled by R_L / A_L, bounded to
  `LIGHTNESS_SCALE`; a and b are rotated by the hue difference and scaled by R_C / A_C (bounded to
  `CHROMA_SCALE`), and whatever the bounds leave over is added in proportion to the pixel's shading.
  Scaling keeps the shading, the texture and the near-neutral pixels (a white print stays white).
- It is applied through a weight: the target's region, dilated and feathered (Gaussian,
  `FEATHER_SIGMA` px), times a gate on the pixel's own colour: its chroma relative to the shaded
  target's (`GATE_RELATIVE_CHROMA`) and its hue distance (`GATE_HUE`), so logos, white stitching and the
  neighbours in the feather stay as they are. On an achromatic target the gate is lightness: pixels much
  lighter than the body (prints, highlights) or clearly chromatic are left alone.
- Out-of-gamut results are mapped back by CSS Color 4 (`gamut`); pixels of zero weight keep their
  bytes. The goal is refined by re-measuring (up to `ITERATIONS` times) and the best try is kept.
- The correction is kept only if the worst ΔE00 drops, no target gets worse, and the rest of the image
  is preserved as well as before (`PRESERVATION_SLACK`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import skimage.morphology

from pipeline.color.change import BoolMask, gaussian_blur, morphology_radius, smooth_lab
from pipeline.color.gamut import oklch_to_srgb_linear
from pipeline.color.inputs import ImageInput, Rgb8Image, same_size, split_alpha
from pipeline.color.measure import measure_preservation, measure_targets, ssim_l_map
from pipeline.color.report import ColorReport, ColorTarget, CorrectionResult, TargetMeasurement
from pipeline.color.spaces import (
    FloatArray,
    delta_e00,
    hue_difference,
    lab_to_oklab,
    linear_to_oklab,
    linear_to_srgb,
    oklab_to_oklch,
    srgb_to_lab,
    srgb_to_linear,
)

_morphology: Any = skimage.morphology  # unannotated functions; see spaces.py

CORRECT_ABOVE = 0.5  # ΔE00: a target this close already is left alone (the estimate is not finer)
STOP_BELOW = 0.3  # ΔE00: refining stops once every corrected target is this close
ITERATIONS = 3  # tries at most: one, then two refinements of the goal
FEATHER_SIGMA = 2.0  # px
FEATHER_FLOOR = 1.0 / 512  # spatial weights under this are zero: they could not move a byte
LIGHTNESS_SCALE = (0.7, 1.0 / 0.7)  # the bounds on the OKLab lightness factor
CHROMA_SCALE = (0.25, 4.0)  # the bounds on the OKLab chroma factor
ACHROMATIC_OKLAB = 0.03  # OKLab chroma of an achieved colour under which its hue means nothing
GATE_RELATIVE_CHROMA = (0.3, 0.6)  # pixel chroma / shaded target chroma: weight 0 below, 1 above
GATE_HUE = (30.0, 60.0)  # degrees from the target's hue: weight 1 below, 0 above
GATE_LIGHTER = (1.3, 1.8)  # achromatic target: pixel L / target L, weight 1 below, 0 above
GATE_CHROMATIC = (0.04, 0.08)  # achromatic target: pixel OKLab chroma, weight 1 below, 0 above
PRESERVATION_SLACK = (0.1, 0.5, 0.005)  # how much worse the rest may get: ΔE00 mean, p95, SSIM
CROP_MARGIN = 10  # px around the touched pixels: 4 for the smoothing, 3 for SSIM's window, and spare
_PATCH_INSET = 5  # px: the crop's values this far from a cut edge are exact


@dataclass(frozen=True)
class _Plan:
    """One target's correction: its index, weights over the crop, achieved and requested OKLab."""

    index: int
    weight: FloatArray
    achieved: FloatArray
    requested: FloatArray


def correct_recolor(baseline: ImageInput, output: ImageInput, before: ColorReport) -> CorrectionResult:
    """Corrects `output` towards the requested colours of `before` (its `measure_recolor` report).

    `baseline`, `output`: the images `before` was measured on. Returns a `CorrectionResult`; its image
    has the output's alpha untouched, and every pixel outside `feathered` is the output's, byte for
    byte. Skips (applied False, with the reason) when no change was detected, the change is global, or
    no target is measurable, unambiguous and off by more than `CORRECT_ABOVE`. Raises `ValueError`
    when the images differ in size from each other or from the report.
    """
    base_rgb, _ = split_alpha(baseline)
    out_rgb, alpha = split_alpha(output)
    same_size(base_rgb, out_rgb)
    if before.mask.shape != out_rgb.shape[:2]:
        raise ValueError("the report was measured on an image of another size")
    targets = [
        ColorTarget(target=measured.target, color=measured.requested_hex) for measured in before.targets
    ]
    original = out_rgb if alpha is None else np.dstack([out_rgb, alpha])

    def skipped(reason: str) -> CorrectionResult:
        return CorrectionResult(
            image=original,
            before=before,
            after=before,
            applied=False,
            ssim_l_region=None,
            reason=reason,
            feathered=np.zeros(before.mask.shape, dtype=bool),
        )

    if before.no_change_detected:
        return skipped("no change detected: nothing to correct")
    if before.global_change:
        return skipped("global change: the changed region is not one object to correct")
    chosen = [
        index
        for index, measured in enumerate(before.targets)
        if measured.achieved_lab is not None
        and measured.delta_e is not None
        and not measured.ambiguous
        and measured.delta_e > CORRECT_ABOVE
    ]
    if not chosen:
        return skipped(f"no measurable, unambiguous target is off by more than {CORRECT_ABOVE} ΔE00")

    crop = _crop_box(before.mask, morphology_radius(before.mask.shape) + int(4 * FEATHER_SIGMA) + CROP_MARGIN)
    out_crop = out_rgb[crop]
    oklab = linear_to_oklab(srgb_to_linear(out_crop))
    plans = [_plan(index, before, crop, oklab) for index in chosen]
    feathered_crop = np.zeros(out_crop.shape[:2], dtype=bool)
    for plan in plans:
        feathered_crop |= plan.weight > 0
    feathered = np.zeros(before.mask.shape, dtype=bool)
    feathered[crop] = feathered_crop

    goals = {plan.index: plan.requested.copy() for plan in plans}
    tries = []
    for _ in range(ITERATIONS):
        attempt = _attempt(out_crop, oklab, plans, goals, targets, before, crop)
        tries.append(attempt)
        if attempt.worst <= STOP_BELOW:
            break
        for plan in plans:  # aim past the miss: goal += requested - achieved, in OKLab
            achieved = attempt.measured[plan.index].achieved_lab
            if achieved is not None:
                goals[plan.index] = goals[plan.index] + plan.requested - lab_to_oklab(np.array(achieved))
    best = min(tries, key=lambda attempt: attempt.worst)  # the earliest of equals
    after = _after_report(before, base_rgb, crop, best)
    output_l = srgb_to_lab(out_crop)[..., 0]
    region_ssim = ssim_l_map(output_l, best.lab[..., 0])[before.mask[crop]]
    ssim_region = float(region_ssim.astype(np.float64).mean())
    image_rgb = out_rgb.copy()
    image_rgb[crop] = best.image
    image = image_rgb if alpha is None else np.dstack([image_rgb, alpha])
    reason = _keep_reason(before, after, chosen)
    if reason is not None:
        result = skipped(f"not kept: {reason}")
        return replace(result, ssim_l_region=ssim_region, feathered=feathered)
    return CorrectionResult(
        image=image,
        before=before,
        after=after,
        applied=True,
        ssim_l_region=ssim_region,
        reason="kept: ΔE00 dropped and the rest of the image is preserved",
        feathered=feathered,
    )


@dataclass(frozen=True)
class _Attempt:
    """One try: the corrected crop (uint8), its CIELAB and smoothed CIELAB, the targets measured on it,
    and the worst ΔE00 among the corrected targets."""

    image: Rgb8Image
    lab: FloatArray
    smooth: FloatArray
    measured: tuple[TargetMeasurement, ...]
    worst: float


def _attempt(
    out_crop: Rgb8Image,
    oklab: FloatArray,
    plans: list[_Plan],
    goals: dict[int, FloatArray],
    targets: list[ColorTarget],
    before: ColorReport,
    crop: tuple[slice, slice],
) -> _Attempt:
    """Applies the plans towards `goals` and measures the result on the report's changed region."""
    image = _apply(out_crop, oklab, plans, goals)
    lab = srgb_to_lab(image)
    smooth = smooth_lab(lab)
    measured = measure_targets(
        targets,
        before.mask[crop],
        before.regions[crop],
        smooth,
        no_change=False,
        kl=before.kl,
        max_delta_e=before.max_delta_e,
    )
    worst = max(_delta_e(measured[plan.index]) for plan in plans)
    return _Attempt(image=image, lab=lab, smooth=smooth, measured=measured, worst=worst)


def _delta_e(measured: TargetMeasurement) -> float:
    return float("inf") if measured.delta_e is None else measured.delta_e


def _crop_box(mask: BoolMask, margin: int) -> tuple[slice, slice]:
    """The bounding box of `mask` grown by `margin` px, within the image."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    height, width = mask.shape
    return (
        slice(max(0, int(rows[0]) - margin), min(height, int(rows[-1]) + margin + 1)),
        slice(max(0, int(cols[0]) - margin), min(width, int(cols[-1]) + margin + 1)),
    )


def _smoothstep(edge0: float, edge1: float, x: FloatArray) -> FloatArray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    result: FloatArray = t * t * (3.0 - 2.0 * t)
    return result


def _plan(index: int, before: ColorReport, crop: tuple[slice, slice], oklab: FloatArray) -> _Plan:
    """The weights of target `index` over the crop: feathered region times the colour gate."""
    measured = before.targets[index]
    assert measured.achieved_lab is not None
    achieved = lab_to_oklab(np.array(measured.achieved_lab))
    requested = lab_to_oklab(np.array(measured.requested_lab))
    region = before.regions[crop] == index
    grown = _morphology.dilation(region, _morphology.disk(morphology_radius(before.mask.shape)))
    spatial = gaussian_blur(grown.astype(np.float32), FEATHER_SIGMA)
    spatial[spatial < FEATHER_FLOOR] = 0.0
    weight = spatial * _gate(oklab, achieved)
    return _Plan(index=index, weight=weight.astype(np.float32), achieved=achieved, requested=requested)


def _gate(oklab: FloatArray, achieved: FloatArray) -> FloatArray:
    """0-1 per pixel of OKLab `...x3`: how much the pixel is the target's material (module docstring)."""
    lch = oklab_to_oklch(oklab)
    target = oklab_to_oklch(achieved)
    shading = lch[..., 0] / max(float(target[0]), 1e-3)
    if target[1] >= ACHROMATIC_OKLAB:
        relative = lch[..., 1] / np.maximum(shading * target[1], 1e-6)
        hue = np.abs(hue_difference(lch[..., 2], target[2]))
        return _smoothstep(*GATE_RELATIVE_CHROMA, relative) * (1.0 - _smoothstep(*GATE_HUE, hue))
    return (1.0 - _smoothstep(*GATE_LIGHTER, shading)) * (1.0 - _smoothstep(*GATE_CHROMATIC, lch[..., 1]))


def _transform(pixels: FloatArray, achieved: FloatArray, goal: FloatArray) -> FloatArray:
    """OKLab pixels `Nx3` of a target whose albedo reads `achieved` -> as if it read `goal` (OKLab)."""
    source, target = oklab_to_oklch(achieved), oklab_to_oklch(goal)
    lightness = float(np.clip(target[0] / max(float(source[0]), 1e-3), *LIGHTNESS_SCALE))
    shading = pixels[:, 0] / max(float(source[0]), 1e-3)
    if source[1] >= ACHROMATIC_OKLAB:
        chroma = float(np.clip(target[1] / source[1], *CHROMA_SCALE))
        turn = np.radians(float(hue_difference(target[2], source[2])))
    else:
        chroma, turn = 1.0, 0.0
    cos, sin = chroma * np.cos(turn), chroma * np.sin(turn)
    rotation = np.array([[cos, -sin], [sin, cos]], dtype=pixels.dtype)
    residual = goal[1:] - rotation @ achieved[1:]  # what the bounds (or an achromatic source) leave over
    ab = pixels[:, 1:] @ rotation.T + shading[:, None] * residual.astype(pixels.dtype)
    return np.concatenate([(pixels[:, 0] * lightness)[:, None], ab], axis=1)


def _apply(
    out_crop: Rgb8Image, oklab: FloatArray, plans: list[_Plan], goals: dict[int, FloatArray]
) -> Rgb8Image:
    """The crop with every plan applied through its weight; pixels of zero weight keep their bytes."""
    total = np.zeros(out_crop.shape[:2], dtype=np.float32)
    for plan in plans:
        total += plan.weight
    touched = total > 0
    pixels = oklab[touched]
    shifted = pixels.copy()
    for plan in plans:
        weight = plan.weight[touched]
        active = weight > 0
        moved = _transform(pixels[active], plan.achieved, goals[plan.index])
        shifted[active] += weight[active, None] * (moved - pixels[active])
    linear = oklch_to_srgb_linear(oklab_to_oklch(shifted))
    encoded = np.clip(np.rint(linear_to_srgb(linear) * 255.0), 0, 255).astype(np.uint8)
    result = out_crop.copy()
    result[touched] = encoded
    return result


def _after_report(
    before: ColorReport,
    base_rgb: Rgb8Image,
    crop: tuple[slice, slice],
    corrected: _Attempt,
) -> ColorReport:
    """`before` with the corrected crop's targets, and its maps patched where the correction reached."""
    base_lab = srgb_to_lab(base_rgb[crop])
    delta_e = delta_e00(smooth_lab(base_lab), corrected.smooth).astype(np.float32)
    ssim = ssim_l_map(base_lab[..., 0], corrected.lab[..., 0])
    inner = _inset(crop, before.mask.shape)
    delta_e_map = before.delta_e_map.copy()
    ssim_map = before.ssim_map.copy()
    local = tuple(
        slice(part.start - whole.start, part.stop - whole.start)
        for part, whole in zip(inner, crop, strict=True)
    )
    delta_e_map[inner] = delta_e[local]
    ssim_map[inner] = ssim[local]
    return replace(
        before,
        targets=corrected.measured,
        preservation=measure_preservation(before.mask, delta_e_map, ssim_map),
        delta_e_map=delta_e_map,
        ssim_map=ssim_map,
    )


def _inset(crop: tuple[slice, slice], shape: tuple[int, ...]) -> tuple[slice, slice]:
    """`crop` shrunk by `_PATCH_INSET` px on every side that is not the image's own edge."""
    rows, cols = crop
    return (
        slice(
            rows.start + (_PATCH_INSET if rows.start > 0 else 0),
            rows.stop - (_PATCH_INSET if rows.stop < shape[0] else 0),
        ),
        slice(
            cols.start + (_PATCH_INSET if cols.start > 0 else 0),
            cols.stop - (_PATCH_INSET if cols.stop < shape[1] else 0),
        ),
    )


def _keep_reason(before: ColorReport, after: ColorReport, chosen: list[int]) -> str | None:
    """Why the correction must not be kept, or None when it may."""
    worst_before = max(_delta_e(before.targets[index]) for index in chosen)
    worst_after = max(_delta_e(after.targets[index]) for index in chosen)
    if not worst_after < worst_before:
        return f"the worst ΔE00 did not drop ({worst_before:.2f} -> {worst_after:.2f})"
    for old, new in zip(before.targets, after.targets, strict=True):
        if _delta_e(new) > _delta_e(old) + 0.05:
            return f"{old.target} got worse ({_delta_e(old):.2f} -> {_delta_e(new):.2f} ΔE00)"
    kept, now = before.preservation, after.preservation
    mean_slack, p95_slack, ssim_slack = PRESERVATION_SLACK
    if kept.delta_e_mean is not None and now.delta_e_mean is not None:
        if now.delta_e_mean > kept.delta_e_mean + mean_slack:
            return (
                f"the rest of the image moved (ΔE00 mean {kept.delta_e_mean:.3f} -> {now.delta_e_mean:.3f})"
            )
        if (
            now.delta_e_p95 is not None
            and kept.delta_e_p95 is not None
            and now.delta_e_p95 > kept.delta_e_p95 + p95_slack
        ):
            return f"the rest of the image moved (ΔE00 p95 {kept.delta_e_p95:.3f} -> {now.delta_e_p95:.3f})"
        if now.ssim_l is not None and kept.ssim_l is not None and now.ssim_l < kept.ssim_l - ssim_slack:
            return f"the rest of the image lost structure (SSIM {kept.ssim_l:.4f} -> {now.ssim_l:.4f})"
    return None
