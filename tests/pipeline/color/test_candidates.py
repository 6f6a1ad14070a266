"""Choosing among N candidates of known error: the best one without a global change, all reported."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from pipeline.color.candidates import choose_candidate
from pipeline.color.measure import measure_recolor
from pipeline.color.report import ColorReport, ColorTarget
from pipeline.color.scenes import Garment, offset_color, recolor_region, render_product

SIZE = (192, 192)
TARGETS = [ColorTarget("shirt", "#1E90FF")]


def candidate_reports(errors: list[float], *, global_change_at: int | None = None) -> list[ColorReport]:
    """One report per seed: the candidate at index i missed #1E90FF by `errors[i]` ΔE00 (0: exact)."""
    baseline = render_product([Garment("#8A8A8A")], size=SIZE, noise_seed=1)
    reports = []
    for index, error in enumerate(errors):
        color = "#1E90FF" if error == 0 else offset_color("#1E90FF", error, seed=index)
        output = render_product([Garment(color)], size=SIZE, noise_seed=10 + index).image
        if index == global_change_at:  # the edit also darkened the whole (grey) background
            background = np.ones(output.shape[:2], dtype=bool)
            background[30:170, 30:170] = False
            output = recolor_region(output, background, "#3C3C3C")
        reports.append(measure_recolor(baseline.image, output, TARGETS))
    return reports


def test_the_lowest_error_wins() -> None:
    reports = candidate_reports([6.0, 2.0, 8.0, 4.0])
    errors = [report.targets[0].delta_e for report in reports]
    assert choose_candidate(reports) == 1, errors
    everything = json.dumps([report.to_dict() for report in reports], sort_keys=True)
    assert len(json.loads(everything)) == 4


def test_a_global_change_is_passed_over() -> None:
    reports = candidate_reports([6.0, 0.0, 3.0, 5.0], global_change_at=3)
    assert reports[3].global_change
    assert not any(report.global_change for report in reports[:3])
    # The exact candidate, had it also changed most of the image, would not be kept.
    reports[1] = replace(reports[1], global_change=True)
    assert reports[1].worst_delta_e is not None
    assert reports[2].worst_delta_e is not None
    assert reports[1].worst_delta_e < reports[2].worst_delta_e
    assert choose_candidate(reports) == 2


def test_no_change_is_passed_over_and_ties_go_to_the_earlier_seed() -> None:
    baseline = render_product([Garment("#8A8A8A")], size=SIZE, noise_seed=1)
    unchanged = render_product([Garment("#8A8A8A")], size=SIZE, noise_seed=2)
    exact = render_product([Garment("#1E90FF")], size=SIZE, noise_seed=3)
    nothing = measure_recolor(baseline.image, unchanged.image, TARGETS)
    good = measure_recolor(baseline.image, exact.image, TARGETS)
    assert nothing.no_change_detected
    assert choose_candidate([nothing, good, good]) == 1
    assert choose_candidate([nothing, nothing]) == 0


def test_when_every_candidate_changed_everything_the_lowest_error_still_wins() -> None:
    reports = [replace(report, global_change=True) for report in candidate_reports([6.0, 3.0])]
    assert choose_candidate(reports) == 1
    with pytest.raises(ValueError, match="at least one"):
        choose_candidate([])
