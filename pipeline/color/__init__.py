"""The colour check of recolor requests (issue 20): measure, gate, correct and choose, on CPU, synchronously.

A request's `recolor: [{target, color}]` asks for colours; after the edit this package answers:

1. Where did it change? `change`: a CIEDE2000 map between a baseline and the output, cut at
   max(6, Otsu) (with hysteresis down to 6) and cleaned; under 0.2 % changed is
   `no_change_detected`, over 60 % `global_change`.
2. What colour did each target come out in? `estimate`: changed pixels split by hue between the
   targets, and each region's albedo read from its well-lit, high-chroma pixels.
3. Correct it when asked: `correct` (OKLCh hue, chroma and lightness through a feathered, gated mask,
   kept only when it helps).
4. Was the rest kept? `Preservation`: ΔE00 mean and p95 and SSIM of L* outside the changed region.
5. Several candidates: `choose_candidate`.
6. The gate: `max_delta_e` gives `passed` per target and for the report; what a failure does
   (`on_fail: fail | deliver`) is the caller's policy.

    report = measure_recolor(baseline, output, [ColorTarget("jacket", "#1E90FF")], kl=2.0, max_delta_e=3.0)
    if mode == "correct":
        result = correct_recolor(baseline, output, report)  # result.image, result.before, result.after
    best = choose_candidate([report_1, report_2, ...])  # candidates from seeds seed ... seed+N-1

Everything works on RGB; alpha is the caller's (a correction returns the input's alpha untouched).
Results are frozen dataclasses with a deterministic `to_dict()`. Sources: CIEDE2000 and its test data,
Sharma, Wu and Dalal (2005); CIELAB, Otsu, morphology and SSIM, scikit-image; OKLab, Ottosson (2020);
gamut mapping, CSS Color Module Level 4 section 13.2.2. Generated colours are scored with CIEDE2000 by
GenColorBench (Butt et al., 2025, arXiv:2510.20586); issue 20 takes ΔE00 5 from it as the bar of a
colour match, and the default gate here, 3 ΔE00, is stricter.
"""

from __future__ import annotations

from pipeline.color.candidates import choose_candidate
from pipeline.color.correct import correct_recolor
from pipeline.color.measure import measure_recolor
from pipeline.color.report import ColorReport, ColorTarget, CorrectionResult, Preservation, TargetMeasurement
from pipeline.color.spaces import delta_e00, hex_to_lab, parse_hex, srgb_to_lab

__all__ = [
    "ColorReport",
    "ColorTarget",
    "CorrectionResult",
    "Preservation",
    "TargetMeasurement",
    "choose_candidate",
    "correct_recolor",
    "delta_e00",
    "hex_to_lab",
    "measure_recolor",
    "parse_hex",
    "srgb_to_lab",
]
