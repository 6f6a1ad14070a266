"""Choosing among candidates: N images from seeds seed ... seed+N-1, one kept (issue 20, step 5)."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.color.report import ColorReport


def choose_candidate(reports: Sequence[ColorReport]) -> int:
    """The index of the candidate to keep, given the reports of all N candidates (seed order).

    A candidate is eligible when it has no `global_change` and every target was measured (so not
    `no_change_detected`); the eligible one with the lowest worst-target ΔE00 wins, the earlier seed on
    a tie. When none is eligible, the lowest worst-target ΔE00 among the measured ones wins, and when
    none was measured, the first. Raises `ValueError` for no reports. The caller reports all of them.
    """
    if not reports:
        raise ValueError("choose_candidate needs at least one report")
    measured = [(report.worst_delta_e, index) for index, report in enumerate(reports)]
    eligible = [
        (delta_e, index)
        for delta_e, index in measured
        if delta_e is not None and not reports[index].global_change
    ]
    if eligible:
        return min(eligible)[1]
    scored = [(delta_e, index) for delta_e, index in measured if delta_e is not None]
    return min(scored)[1] if scored else 0
