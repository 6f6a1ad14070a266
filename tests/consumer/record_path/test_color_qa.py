"""The colour check on the production record path: an editor renders an imperfect recolour with a known
CIEDE2000 error; the result reports that error, `correct` brings it within 1.0, the gate fails it when
asked (the output stored for review), and of several candidates the closest is kept and all reported."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from pipeline import EditJob, EditOutput, StandInEditor
from pipeline.color.scenes import Garment, offset_color, recolor_region, render_product
from schemas.errors import ErrorCode
from schemas.results import EditStatus
from tests.consumer.record_path.path import RecordPath

pytestmark = pytest.mark.timeout(120)
BLUE = "#1E90FF"
SIZE = (192, 192)
PRODUCT = render_product([Garment("#8A8A8A")], size=SIZE, seed=3)


class RecolorEditor(StandInEditor):
    """Recolours the product in the base image to `BLUE` off by `errors[seed - first_seed]` ΔE00 (cycling),
    keeping shading, texture and the white logo: a model that misses the hex code by a known amount."""

    def __init__(self, errors: list[float]) -> None:
        super().__init__(edit_ms=0)
        self.errors = errors
        self.seeds: list[int] = []

    def edit(self, job: EditJob) -> EditOutput:
        result = super().edit(job)
        self.seeds.append(job.seed)
        error = self.errors[(len(self.seeds) - 1) % len(self.errors)]
        color = offset_color(BLUE, error, seed=7) if error else BLUE
        base = np.asarray(job.images[0].convert("RGB").resize((job.width, job.height)))
        region = PRODUCT.objects[0] & ~PRODUCT.logos[0]
        image = Image.fromarray(recolor_region(base, region, color))
        return EditOutput(
            image=image, inference_ms=result.inference_ms, transformer_passes=result.transformer_passes
        )


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def make(
    make_path: Callable[..., RecordPath], errors: list[float], **sections: dict[str, object]
) -> RecordPath:
    from tests.consumer.record_path.path import path_settings

    return RecordPath(path_settings(**sections), RecolorEditor(errors))


@pytest.fixture
def recolor_path(make_path: Callable[..., RecordPath]) -> Callable[..., RecordPath]:
    made: list[RecordPath] = []

    def build(errors: list[float], **sections: dict[str, object]) -> RecordPath:
        path = make(make_path, errors, **sections)
        made.append(path)
        return path

    yield build  # type: ignore[misc]
    for path in made:
        path.close()


def recolor_request(path: RecordPath, **color_qa: object) -> object:
    image = path.stage("shoe.png", png(PRODUCT.image))
    fields: dict[str, object] = {"recolor": [{"target": "the sneaker", "color": BLUE}], "seed": 11}
    if color_qa:
        fields["color_qa"] = color_qa
    return path.request(image, **fields)


async def test_the_result_reports_the_colour_the_target_came_out_in(
    recolor_path: Callable[..., RecordPath],
) -> None:
    path = recolor_path([6.0])
    assert await path.handle(recolor_request(path))  # type: ignore[arg-type]
    result = path.result()
    assert result.status is EditStatus.SUCCEEDED, result.error
    qa = result.color_qa
    assert qa is not None
    assert qa.mode == "measure"
    (target,) = qa.targets
    assert target.requested == BLUE
    assert target.delta_e is not None
    assert abs(target.delta_e - 6.0) <= 1.5
    assert not target.passed
    assert not qa.passed  # on_fail defaults to deliver: succeeded, passed false
    assert result.timing_ms.qa > 0
    assert qa.preservation is not None
    assert qa.preservation.ssim_l > 0.9


async def test_correct_brings_an_injected_error_within_1(recolor_path: Callable[..., RecordPath]) -> None:
    path = recolor_path([6.0])
    assert await path.handle(recolor_request(path, mode="correct"))  # type: ignore[arg-type]
    result = path.result()
    qa = result.color_qa
    assert qa is not None
    assert qa.corrected
    (target,) = qa.targets
    assert target.delta_e is not None
    assert target.delta_e <= 1.0
    assert target.delta_e_before_correction is not None
    assert target.delta_e_before_correction > 4.0
    assert qa.passed
    assert result.status is EditStatus.SUCCEEDED


async def test_the_gate_fails_out_of_tolerance_and_keeps_the_output_for_review(
    recolor_path: Callable[..., RecordPath],
) -> None:
    path = recolor_path([6.0])
    req = recolor_request(path, on_fail="fail", max_delta_e=2.0)
    assert await path.handle(req)  # type: ignore[arg-type]
    result = path.result()
    assert result.status is EditStatus.FAILED
    assert result.error is not None
    assert result.error.code is ErrorCode.COLOR_OUT_OF_TOLERANCE
    assert result.error.retryable is False
    assert result.output is not None  # stored, so a person can review it
    assert path.store.read(result.output.uri)
    assert result.cost.usd > 0  # the GPU ran: the image is billed
    assert path.dead_letters() == []
    # A redelivery is answered from S3 with the same verdict.
    assert await path.handle(req)  # type: ignore[arg-type]
    again = path.results()[-1]
    assert again.error is not None
    assert again.error.code is ErrorCode.COLOR_OUT_OF_TOLERANCE
    assert again.color_qa == result.color_qa


async def test_of_several_candidates_the_closest_is_kept_and_all_are_billed(
    recolor_path: Callable[..., RecordPath],
) -> None:
    path = recolor_path([8.0, 1.0, 5.0])
    assert await path.handle(recolor_request(path, candidates=3))  # type: ignore[arg-type]
    result = path.result()
    qa = result.color_qa
    assert qa is not None
    assert qa.chosen_candidate == 1
    assert [c.seed for c in qa.candidates] == [11, 12, 13]
    deltas = [c.delta_e for c in qa.candidates]
    assert all(d is not None for d in deltas)
    assert deltas[1] == min(d for d in deltas if d is not None)
    assert result.params is not None
    assert result.params.seed == 12  # the kept image's seed
    assert result.cost.images == 3
    assert result.cost.usd == pytest.approx(3 * 192 * 192 / 1e6 * 0.002, abs=1e-8)


async def test_more_candidates_than_the_operator_allows_are_refused(
    recolor_path: Callable[..., RecordPath],
) -> None:
    path = recolor_path([1.0], color_qa={"max_candidates": 2})
    assert await path.handle(recolor_request(path, candidates=3))  # type: ignore[arg-type]
    result = path.result()
    assert result.error is not None
    assert result.error.code is ErrorCode.INVALID_EVENT
    assert "MAX_CANDIDATES" in result.error.message
