"""The colour check of one output: the report, its gate, its JSON, and the inputs it accepts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipeline.color.measure import measure_recolor
from pipeline.color.report import ColorReport, ColorTarget
from pipeline.color.scenes import Garment, render_product

SIZE = (256, 256)
SHIRT = Garment("#1E90FF", center=(0.32, 0.55), radii=(0.22, 0.3))
CAP = Garment("#D62828", center=(0.75, 0.4), radii=(0.16, 0.16), logo=False)


def recolour(*garments: Garment, original: str = "#8A8A8A", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(baseline, output) renders of one product: all garments in `original`, then in their colours."""
    baseline = render_product(
        [Garment(original, g.center, g.radii, g.logo) for g in garments], size=SIZE, seed=seed
    )
    output = render_product(list(garments), size=SIZE, seed=seed, noise_seed=seed + 7)
    return baseline.image, output.image


def test_a_good_recolour_passes() -> None:
    baseline, output = recolour(Garment("#1E90FF"))
    report = measure_recolor(baseline, output, [ColorTarget("shirt", "#1e90ff")])
    (shirt,) = report.targets
    assert shirt.requested_hex == "#1E90FF"
    assert shirt.delta_e is not None
    assert shirt.delta_e <= 1.5
    assert shirt.passed
    assert report.passed
    assert not shirt.ambiguous
    assert shirt.pixels == int(np.count_nonzero(report.regions == 0)) > 0
    assert not report.no_change_detected
    assert not report.global_change
    assert 0.2 < report.changed_fraction < 0.45
    preservation = report.preservation
    assert preservation.delta_e_mean is not None
    assert preservation.delta_e_mean < 1.0
    assert preservation.delta_e_p95 is not None
    assert preservation.delta_e_p95 < 2.0
    assert preservation.ssim_l is not None
    assert preservation.ssim_l > 0.9


def test_the_gate_compares_with_max_delta_e() -> None:
    baseline, output = recolour(Garment("#3A7FE0"))  # about ΔE00 6 from #1E90FF
    strict = measure_recolor(baseline, output, [ColorTarget("shirt", "#1E90FF")], max_delta_e=3.0)
    lenient = measure_recolor(baseline, output, [ColorTarget("shirt", "#1E90FF")], max_delta_e=10.0)
    assert strict.targets[0].delta_e == lenient.targets[0].delta_e
    assert strict.targets[0].delta_e is not None
    assert 3.0 < strict.targets[0].delta_e < 10.0
    assert not strict.passed
    assert lenient.passed


@pytest.mark.parametrize("max_delta_e", [0.4, 20.5])
def test_the_gate_is_bounded(max_delta_e: float) -> None:
    baseline, output = recolour(Garment("#1E90FF"))
    with pytest.raises(ValueError, match="max_delta_e"):
        measure_recolor(baseline, output, [ColorTarget("shirt", "#1E90FF")], max_delta_e=max_delta_e)


def test_textile_kl_weights_a_lightness_miss_by_half() -> None:
    baseline, output = recolour(Garment("#1E90FF"))
    darker = "#1A7AD9"  # the same hue, darker
    plain = measure_recolor(baseline, output, [ColorTarget("shirt", darker)])
    textile = measure_recolor(baseline, output, [ColorTarget("shirt", darker)], kl=2.0)
    assert plain.targets[0].delta_e is not None
    assert textile.targets[0].delta_e is not None
    assert textile.targets[0].delta_e < 0.75 * plain.targets[0].delta_e
    assert textile.kl == 2.0


def test_noise_only_is_no_change_and_fails_the_gate() -> None:
    render = render_product([Garment("#1E90FF")], size=SIZE, noise_seed=1)
    again = render_product([Garment("#1E90FF")], size=SIZE, noise_seed=2)
    report = measure_recolor(render.image, again.image, [ColorTarget("shirt", "#1E90FF")])
    assert report.no_change_detected
    assert not report.passed
    assert report.targets[0].delta_e is None
    assert report.targets[0].achieved_hex is None


def test_two_targets_are_split_by_hue() -> None:
    baseline, output = recolour(SHIRT, CAP)
    report = measure_recolor(
        baseline, output, [ColorTarget("shirt", "#1E90FF"), ColorTarget("cap", "#D62828")]
    )
    shirt, cap = report.targets
    assert shirt.delta_e is not None
    assert shirt.delta_e <= 1.5
    assert cap.delta_e is not None
    assert cap.delta_e <= 1.5
    assert not shirt.ambiguous
    assert not cap.ambiguous
    assert shirt.pixels > 2 * cap.pixels > 0


def test_two_close_targets_are_ambiguous() -> None:
    baseline, output = recolour(SHIRT, Garment("#2A85F0", CAP.center, CAP.radii, logo=False))
    report = measure_recolor(
        baseline, output, [ColorTarget("shirt", "#1E90FF"), ColorTarget("cap", "#2A85F0")]
    )
    assert [target.ambiguous for target in report.targets] == [True, True]


def test_a_red_near_hue_zero_has_no_wrap_bug() -> None:
    baseline, output = recolour(Garment("#C8306E"))  # CIELAB hue about 1°: its pixels straddle 0°/360°
    report = measure_recolor(baseline, output, [ColorTarget("top", "#C8306E"), ColorTarget("bag", "#2A9D8F")])
    top = report.targets[0]
    assert top.delta_e is not None
    assert top.delta_e <= 1.5
    assert top.pixels > 0.95 * np.count_nonzero(report.mask)


def test_same_inputs_same_json() -> None:
    baseline, output = recolour(SHIRT, CAP)
    targets = [ColorTarget("shirt", "#1E90FF"), ColorTarget("cap", "#D62828")]
    first = json.dumps(measure_recolor(baseline, output, targets).to_dict(), sort_keys=True)
    second = json.dumps(measure_recolor(baseline.copy(), output.copy(), targets).to_dict(), sort_keys=True)
    assert first == second
    assert json.loads(first)["targets"][1]["target"] == "cap"


def test_alpha_is_ignored_and_pil_images_are_accepted() -> None:
    baseline, output = recolour(Garment("#1E90FF"))
    targets = [ColorTarget("shirt", "#1E90FF")]
    alpha = np.zeros(output.shape[:2], dtype=np.uint8)
    alpha[40:200, 40:200] = 255
    cut_out = np.dstack([output, alpha])
    plain = measure_recolor(baseline, output, targets)
    assert _same(plain, measure_recolor(baseline, cut_out, targets))
    assert _same(plain, measure_recolor(Image.fromarray(baseline), Image.fromarray(cut_out, "RGBA"), targets))


def _same(first: ColorReport, second: ColorReport) -> bool:
    return first.to_dict() == second.to_dict() and np.array_equal(first.mask, second.mask)


def test_inputs_that_do_not_fit_are_refused() -> None:
    baseline, output = recolour(Garment("#1E90FF"))
    targets = [ColorTarget("shirt", "#1E90FF")]
    with pytest.raises(ValueError, match="differ in size"):
        measure_recolor(baseline[:-16], output, targets)
    with pytest.raises(ValueError, match="uint8"):
        measure_recolor(baseline.astype(np.float32), output, targets)
    with pytest.raises(ValueError, match="at least one"):
        measure_recolor(baseline, output, [])
    with pytest.raises(ValueError, match="#RRGGBB"):
        measure_recolor(baseline, output, [ColorTarget("shirt", "dodgerblue")])
