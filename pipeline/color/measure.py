"""Measuring a recolour: where the image changed, what colour each target came out in, what was kept.

Issue 20, steps 1, 2, 4 and 6, composed from `change`, `estimate` and `spaces`. The baseline is the
base image after a VAE round trip (the model's own noise floor) when the editor can give one, else the
conditioned input; the caller picks it and resizes it to the output's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import skimage.metrics
import skimage.morphology

from pipeline.color.change import BoolMask, ChangeMap, detect_change, morphology_radius, smooth_lab
from pipeline.color.estimate import (
    AMBIGUOUS_BELOW,
    MIN_PIXELS,
    ambiguous_targets,
    estimate_color,
    split_by_hue,
)
from pipeline.color.gamut import oklch_to_srgb_linear
from pipeline.color.inputs import ImageInput, same_size, split_alpha
from pipeline.color.report import ColorReport, ColorTarget, Preservation, TargetMeasurement, lab_tuple
from pipeline.color.spaces import (
    FloatArray,
    delta_e00,
    hex_to_lab,
    lab_to_oklab,
    linear_to_srgb,
    oklab_to_oklch,
    parse_hex,
    srgb_to_lab,
    to_hex,
)

_metrics: Any = skimage.metrics  # unannotated functions; see spaces.py
_morphology: Any = skimage.morphology

MAX_DELTA_E_RANGE = (0.5, 20.0)  # the gate's bounds, issue 20
ESTIMATE_EROSION = 2  # px: the region's edge mixes with its surroundings, and is left out of the estimate
SSIM_WINDOW = 7  # px: scikit-image's default window for structural_similarity


def measure_recolor(
    baseline: ImageInput,
    output: ImageInput,
    targets: Sequence[ColorTarget],
    *,
    kl: float = 1.0,
    max_delta_e: float = 3.0,
) -> ColorReport:
    """The colour check of `output` against `baseline` for a request's recolor `targets`.

    `baseline`, `output`: PIL images or uint8 arrays HxWx3 / HxWx4 of the same size, at least 7x7 px;
    alpha is ignored (see `inputs`). `kl`: the kL of the per-target CIEDE2000 (2 for textiles).
    `max_delta_e`: the gate, 0.5-20 ΔE00. Raises `ValueError` for sizes that differ, no targets, a bad
    #RRGGBB, or `kl` / `max_delta_e` out of range. Takes 0.5-0.9 s per output megapixel on a shared
    two-core machine (`python -m pipeline.tools.color_bench`).
    """
    check_gate(kl=kl, max_delta_e=max_delta_e)
    if not targets:
        raise ValueError("measure_recolor needs at least one recolor target")
    requested = np.stack([hex_to_lab(target.color) for target in targets])
    base_rgb, _ = split_alpha(baseline)
    out_rgb, _ = split_alpha(output)
    same_size(base_rgb, out_rgb)
    base_lab, out_lab = srgb_to_lab(base_rgb), srgb_to_lab(out_rgb)
    out_smooth = smooth_lab(out_lab)
    change = detect_change(smooth_lab(base_lab), out_smooth)
    regions = split_regions(change.mask, out_smooth, requested)
    return assemble_report(
        targets,
        change,
        regions,
        out_smooth,
        ssim_map=ssim_l_map(base_lab[..., 0], out_lab[..., 0]),
        kl=kl,
        max_delta_e=max_delta_e,
    )


def check_gate(*, kl: float, max_delta_e: float) -> None:
    """Raises `ValueError` unless kL > 0 and `max_delta_e` is within 0.5-20 (issue 20)."""
    if not kl > 0:
        raise ValueError(f"kl must be positive, got {kl}")
    if not MAX_DELTA_E_RANGE[0] <= max_delta_e <= MAX_DELTA_E_RANGE[1]:
        raise ValueError(f"max_delta_e must be within {MAX_DELTA_E_RANGE}, got {max_delta_e}")


def split_regions(mask: BoolMask, lab: FloatArray, requested: FloatArray) -> npt.NDArray[np.int16]:
    """int16 HxW: for each changed pixel the index of its target (`estimate.split_by_hue` on the smoothed
    output `lab`), -1 outside the changed region."""
    regions = np.full(mask.shape, -1, dtype=np.int16)
    if np.any(mask):
        regions[mask] = split_by_hue(lab[mask], requested).astype(np.int16)
    return regions


def ssim_l_map(baseline_l: FloatArray, output_l: FloatArray) -> FloatArray:
    """The SSIM map (float32 HxW) of two CIELAB L* planes: 7x7 window, data range 100."""
    _, ssim_map = _metrics.structural_similarity(
        baseline_l, output_l, data_range=100.0, win_size=SSIM_WINDOW, full=True
    )
    result: FloatArray = np.asarray(ssim_map, dtype=np.float32)
    return result


def assemble_report(
    targets: Sequence[ColorTarget],
    change: ChangeMap,
    regions: npt.NDArray[np.int16],
    output_smooth: FloatArray,
    *,
    ssim_map: FloatArray,
    kl: float,
    max_delta_e: float,
) -> ColorReport:
    """A `ColorReport` from the change, the split, the smoothed output's CIELAB and the SSIM map."""
    return ColorReport(
        changed_fraction=change.fraction,
        threshold=change.threshold,
        no_change_detected=change.no_change_detected,
        global_change=change.global_change,
        targets=measure_targets(
            targets,
            change.mask,
            regions,
            output_smooth,
            no_change=change.no_change_detected,
            kl=kl,
            max_delta_e=max_delta_e,
        ),
        preservation=measure_preservation(change.mask, change.delta_e, ssim_map),
        kl=kl,
        max_delta_e=max_delta_e,
        mask=change.mask,
        regions=regions,
        delta_e_map=change.delta_e,
        ssim_map=ssim_map,
    )


def measure_targets(
    targets: Sequence[ColorTarget],
    mask: BoolMask,
    regions: npt.NDArray[np.int16],
    output_smooth: FloatArray,
    *,
    no_change: bool,
    kl: float,
    max_delta_e: float,
) -> tuple[TargetMeasurement, ...]:
    """One `TargetMeasurement` per target. `mask`, `regions` and `output_smooth` (CIELAB HxWx3) may be a
    crop of the image as long as it holds the whole changed region. With `no_change`, no estimates."""
    requested = np.stack([hex_to_lab(target.color) for target in targets])
    ambiguous = ambiguous_targets(requested)
    near = delta_e00(requested[:, None, :], requested[None, :, :]) < AMBIGUOUS_BELOW
    inner = mask & _morphology.erosion(mask, _morphology.disk(ESTIMATE_EROSION))
    measured = []
    for index, target in enumerate(targets):
        group = np.flatnonzero(near[index]) if ambiguous[index] else np.array([index])
        members = np.isin(regions, group)
        pixels = int(np.count_nonzero(regions == index))
        usable = members & inner
        if np.count_nonzero(usable) < MIN_PIXELS:
            usable = members & mask
        achieved = None if no_change else estimate_color(output_smooth[usable])
        delta_e = None if achieved is None else float(delta_e00(achieved, requested[index], kl=kl))
        measured.append(
            TargetMeasurement(
                target=target.target,
                requested_hex=to_hex(parse_hex(target.color)),
                requested_lab=lab_tuple(requested[index]),
                achieved_hex=None if achieved is None else lab_to_hex(achieved),
                achieved_lab=None if achieved is None else lab_tuple(achieved),
                delta_e=delta_e,
                pixels=pixels,
                ambiguous=bool(ambiguous[index]),
                passed=delta_e is not None and delta_e <= max_delta_e,
            )
        )
    return tuple(measured)


def measure_preservation(mask: BoolMask, delta_e_map: FloatArray, ssim_map: FloatArray) -> Preservation:
    """`Preservation` over the pixels outside `mask` dilated by `morphology_radius + 2` px."""
    margin = _morphology.disk(morphology_radius(mask.shape) + 2)
    outside = ~_morphology.dilation(mask, margin) if np.any(mask) else np.ones(mask.shape, dtype=bool)
    if not np.any(outside):
        return Preservation(delta_e_mean=None, delta_e_p95=None, ssim_l=None)
    delta_e = delta_e_map[outside].astype(np.float64)
    return Preservation(
        delta_e_mean=float(delta_e.mean()),
        delta_e_p95=float(np.percentile(delta_e, 95)),
        ssim_l=float(ssim_map[outside].astype(np.float64).mean()),
    )


def lab_to_hex(lab: FloatArray) -> str:
    """A CIELAB colour `(3,)` -> #RRGGBB, mapped into sRGB by CSS Color 4 when it lies outside."""
    linear = oklch_to_srgb_linear(oklab_to_oklch(lab_to_oklab(lab)))
    rgb = np.clip(np.rint(linear_to_srgb(linear) * 255.0), 0, 255).astype(int)
    return to_hex((int(rgb[0]), int(rgb[1]), int(rgb[2])))
