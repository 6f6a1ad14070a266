"""Correcting a recolour that missed: injected errors of known size, on renders of known truth."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import skimage.morphology

from pipeline.color.correct import correct_recolor
from pipeline.color.measure import measure_recolor, ssim_l_map
from pipeline.color.report import ColorTarget, CorrectionResult
from pipeline.color.scenes import Garment, Render, offset_color, render_product
from pipeline.color.spaces import delta_e00, hex_to_lab, srgb_to_lab

_morphology: Any = skimage.morphology  # unannotated functions
SIZE = (256, 256)


def miss(requested: str, error: float, *, seed: int) -> tuple[Render, Render, Render, str]:
    """(baseline, output, truth, output colour): the output's albedo is `error` ΔE00 off `requested`;
    the truth is the same render with the requested albedo and the output's noise."""
    wrong = offset_color(requested, error, seed=seed)
    baseline = render_product([Garment("#8A8A8A")], size=SIZE, seed=seed, noise_seed=1)
    output = render_product([Garment(wrong)], size=SIZE, seed=seed, noise_seed=2)
    truth = render_product([Garment(requested)], size=SIZE, seed=seed, noise_seed=2)
    return baseline, output, truth, wrong


def corrected(requested: str, error: float, seed: int) -> tuple[Render, Render, CorrectionResult]:
    baseline, output, truth, _ = miss(requested, error, seed=seed)
    before = measure_recolor(baseline.image, output.image, [ColorTarget("shirt", requested)])
    return output, truth, correct_recolor(baseline.image, output.image, before)


@pytest.mark.parametrize("requested", ["#1E90FF", "#2A9D8F", "#F4D35E", "#6A4C93", "#C8306E", "#1A1A1A"])
@pytest.mark.parametrize("error", [4.0, 6.0, 8.0])
def test_injected_errors_end_within_1(requested: str, error: float) -> None:
    output, truth, result = corrected(requested, error, seed=int(error))
    before, after = result.before.targets[0], result.after.targets[0]
    assert before.delta_e is not None
    assert before.delta_e > 2.5
    assert result.applied, result.reason
    assert after.delta_e is not None
    assert after.delta_e <= 1.0

    # Structure inside the region: the corrected image against the render of the requested colour.
    corrected_l, truth_l = srgb_to_lab(result.image)[..., 0], srgb_to_lab(truth.image)[..., 0]
    assert float(ssim_l_map(truth_l, corrected_l)[result.before.mask].mean()) >= 0.98

    # The white print inside the region stays where it was.
    logo = _morphology.erosion(output.logos[0], _morphology.disk(1))
    logo_shift = delta_e00(srgb_to_lab(output.image)[logo], srgb_to_lab(result.image)[logo])
    assert float(logo_shift.mean()) <= 0.5

    # Pixels outside the feathered region are the output's bytes; the rest of the image is kept.
    assert np.array_equal(result.image[~result.feathered], output.image[~result.feathered])
    assert result.feathered.mean() < 0.6
    kept, now = result.before.preservation, result.after.preservation
    assert kept.delta_e_mean is not None
    assert now.delta_e_mean is not None
    assert now.delta_e_mean <= kept.delta_e_mean + 0.05


def test_a_red_across_hue_zero_is_corrected_everywhere() -> None:
    """#C8306E sits at CIELAB and OKLab hue ~1°; the injected error turns it across 0° to ~350°."""
    output, _, result = corrected("#C8306E", 6.0, seed=11)
    assert result.applied
    assert result.after.targets[0].delta_e is not None
    assert result.after.targets[0].delta_e <= 1.0
    body = _morphology.erosion(output.objects[0] & ~output.logos[0], _morphology.disk(3))
    moved = np.any(result.image[body] != output.image[body], axis=-1)
    assert moved.mean() > 0.9


def test_alpha_is_returned_untouched() -> None:
    baseline, output, _, _ = miss("#1E90FF", 6.0, seed=3)
    alpha = np.random.default_rng(0).integers(0, 256, output.image.shape[:2], dtype=np.uint8)
    cut_out = np.dstack([output.image, alpha])
    before = measure_recolor(baseline.image, cut_out, [ColorTarget("shirt", "#1E90FF")])
    result = correct_recolor(baseline.image, cut_out, before)
    assert result.applied
    assert result.image.shape == (*SIZE[::-1], 4)
    assert np.array_equal(result.image[..., 3], alpha)
    plain = correct_recolor(baseline.image, output.image, before)
    assert np.array_equal(result.image[..., :3], plain.image)


def test_the_same_inputs_give_the_same_bytes_and_json() -> None:
    baseline, output, _, _ = miss("#2A9D8F", 6.0, seed=4)
    before = measure_recolor(baseline.image, output.image, [ColorTarget("shirt", "#2A9D8F")])
    first = correct_recolor(baseline.image, output.image, before)
    second = correct_recolor(baseline.image, output.image, before)
    assert np.array_equal(first.image, second.image)
    assert first.to_dict() == second.to_dict()


def test_nothing_to_correct_is_skipped() -> None:
    render = render_product([Garment("#1E90FF")], size=SIZE, noise_seed=1)
    again = render_product([Garment("#1E90FF")], size=SIZE, noise_seed=2)
    before = measure_recolor(render.image, again.image, [ColorTarget("shirt", "#1E90FF")])
    result = correct_recolor(render.image, again.image, before)
    assert not result.applied
    assert "no change" in result.reason
    assert result.after is result.before
    assert np.array_equal(result.image, again.image)


def test_ambiguous_targets_are_not_corrected() -> None:
    baseline, output, _, _ = miss("#1E90FF", 6.0, seed=5)
    targets = [ColorTarget("shirt", "#1E90FF"), ColorTarget("sleeve", "#2A85F0")]
    before = measure_recolor(baseline.image, output.image, targets)
    result = correct_recolor(baseline.image, output.image, before)
    assert not result.applied
    assert "unambiguous" in result.reason
    assert np.array_equal(result.image, output.image)


def test_two_targets_are_corrected_apart() -> None:
    shirt, cap = (
        Garment("#3A7FE0", (0.32, 0.55), (0.22, 0.3)),
        Garment("#C0392B", (0.75, 0.4), (0.16, 0.16), False),
    )
    baseline = render_product(
        [Garment("#8A8A8A", g.center, g.radii, g.logo) for g in (shirt, cap)], size=SIZE
    )
    output = render_product([shirt, cap], size=SIZE, noise_seed=2)
    targets = [ColorTarget("shirt", "#1E90FF"), ColorTarget("cap", "#D62828")]
    result = correct_recolor(
        baseline.image, output.image, measure_recolor(baseline.image, output.image, targets)
    )
    assert result.applied
    for before, after in zip(result.before.targets, result.after.targets, strict=True):
        assert before.delta_e is not None
        assert before.delta_e > 2.0
        assert after.delta_e is not None
        assert after.delta_e <= 1.0


def test_a_report_of_another_image_is_refused() -> None:
    baseline, output, _, _ = miss("#1E90FF", 6.0, seed=6)
    before = measure_recolor(baseline.image, output.image, [ColorTarget("shirt", "#1E90FF")])
    with pytest.raises(ValueError, match="another size"):
        correct_recolor(baseline.image[:128, :128], output.image[:128, :128], before)


def test_requested_colours_are_reached_in_truth_too() -> None:
    """Not only the estimate moves: the corrected pixels approach the render of the requested colour."""
    output, truth, result = corrected("#1E90FF", 8.0, seed=8)
    body = _morphology.erosion(output.objects[0] & ~output.logos[0], _morphology.disk(3))
    truth_lab = srgb_to_lab(truth.image)[body]
    before = np.median(delta_e00(truth_lab, srgb_to_lab(output.image)[body]))
    after = np.median(delta_e00(truth_lab, srgb_to_lab(result.image)[body]))
    assert after < 1.0 < 5.0 < before
    assert float(delta_e00(hex_to_lab("#1E90FF"), np.array(result.after.targets[0].requested_lab))) < 1e-9
