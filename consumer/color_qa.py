"""The colour check as a stage of the record path (issue 20): the request's plan, then measure, choose and
correct the generated candidates, off the GPU thread.

The colour science is `pipeline.color`'s (CIEDE2000, change map, robust estimate, OKLCh correction); this
module decides what a request gets (the operator's defaults and caps, `ColorQaSettings`) and turns the
reports into the result's `color_qa` block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from consumer.policy import RequestRejected
from consumer.settings import ColorQaSettings
from pipeline.color import ColorReport, ColorTarget, choose_candidate, correct_recolor, measure_recolor
from schemas.requests import EditRequest
from schemas.results import CandidateColor, ColorQa, Preservation, TargetColor


@dataclass(frozen=True)
class ColorPlan:
    """What the colour check does for one request: `candidates` images, the kept one measured (and
    corrected), gated at `max_delta_e` CIEDE2000 with lightness weight `k_l`."""

    mode: Literal["measure", "correct"]
    max_delta_e: float
    k_l: float
    candidates: int
    on_fail: Literal["fail", "deliver"]
    targets: tuple[ColorTarget, ...]


def plan_color_qa(request: EditRequest, settings: ColorQaSettings) -> ColorPlan | None:
    """The request's plan, None when the check is off. Raises `RequestRejected` (INVALID_EVENT) for a
    check without `recolor` or more candidates than the operator allows."""
    spec = request.color_qa
    if not request.recolor:
        if spec is not None and spec.mode not in (None, "off"):
            raise RequestRejected(
                "color_qa: the colour check needs recolor targets; add recolor or drop color_qa"
            )
        return None
    mode = spec.mode.value if spec is not None and spec.mode is not None else settings.default_mode
    if mode == "off":
        return None
    candidates = spec.candidates if spec is not None and spec.candidates is not None else 1
    if candidates > settings.max_candidates:
        raise RequestRejected(
            f"color_qa.candidates: {candidates} given, at most {settings.max_candidates} allowed on this "
            "worker (KLEIN_EDIT_COLOR_QA__MAX_CANDIDATES)"
        )
    return ColorPlan(
        mode="correct" if mode == "correct" else "measure",
        max_delta_e=spec.max_delta_e
        if spec is not None and spec.max_delta_e is not None
        else settings.max_delta_e,
        k_l=settings.k_l,
        candidates=candidates,
        on_fail=spec.on_fail.value if spec is not None and spec.on_fail is not None else settings.on_fail,
        targets=tuple(ColorTarget(target=item.target, color=item.color) for item in request.recolor),
    )


@dataclass(frozen=True)
class CheckedColor:
    """The kept candidate (`index`, its `image`, corrected when that helped) and the result block."""

    index: int
    image: Image.Image
    result: ColorQa


def check_candidates(
    plan: ColorPlan, baseline: Image.Image, outputs: list[Image.Image], *, seed: int
) -> CheckedColor:
    """Measure every candidate (generated with seeds `seed`, `seed` + 1, ...) against `baseline` (the
    conditioned base image), keep the best, correct it when the plan says so. Blocking: an I/O thread."""
    if baseline.size != outputs[0].size:
        baseline = baseline.resize(outputs[0].size, Image.Resampling.LANCZOS)
    reports = [
        measure_recolor(baseline, output, plan.targets, kl=plan.k_l, max_delta_e=plan.max_delta_e)
        for output in outputs
    ]
    index = choose_candidate(reports)
    kept, report, before = outputs[index], reports[index], None
    corrected = False
    if plan.mode == "correct":
        correction = correct_recolor(baseline, kept, report)
        if correction.applied:
            kept = Image.fromarray(np.ascontiguousarray(correction.image[..., :3]), "RGB")
            before, report, corrected = report, correction.after, True
    candidates = [
        CandidateColor(index=i, seed=seed + i, delta_e=_r(r.worst_delta_e), global_change=r.global_change)
        for i, r in enumerate(reports)
    ]
    return CheckedColor(
        index=index, image=kept, result=_result(plan, report, before, corrected, index, candidates)
    )


def _result(
    plan: ColorPlan,
    report: ColorReport,
    before: ColorReport | None,
    corrected: bool,
    index: int,
    candidates: list[CandidateColor],
) -> ColorQa:
    before_by_target = {t.target: t.delta_e for t in before.targets} if before is not None else {}
    preservation = report.preservation
    return ColorQa(
        mode=plan.mode,
        max_delta_e=plan.max_delta_e,
        k_l=plan.k_l,
        passed=report.passed,
        changed_fraction=round(report.changed_fraction, 6),
        no_change_detected=report.no_change_detected,
        global_change=report.global_change,
        corrected=corrected,
        targets=[
            TargetColor(
                target=t.target,
                requested=t.requested_hex,
                achieved=t.achieved_hex,
                requested_lab=[round(v, 2) for v in t.requested_lab],
                achieved_lab=[round(v, 2) for v in t.achieved_lab] if t.achieved_lab is not None else None,
                delta_e=_r(t.delta_e),
                delta_e_before_correction=_r(before_by_target.get(t.target)) if corrected else None,
                pixels=t.pixels,
                ambiguous=t.ambiguous,
                passed=t.passed,
            )
            for t in report.targets
        ],
        preservation=Preservation(
            delta_e_mean=round(preservation.delta_e_mean, 3),
            delta_e_p95=round(preservation.delta_e_p95, 3),
            ssim_l=round(preservation.ssim_l, 4),
        )
        if preservation.delta_e_mean is not None
        and preservation.delta_e_p95 is not None
        and preservation.ssim_l is not None
        else None,
        chosen_candidate=index,
        candidates=candidates if len(candidates) > 1 else [],
    )


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
