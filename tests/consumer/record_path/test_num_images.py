"""Several images per request on the production record path: distinct seeds and objects, the cost the
sum, idempotent per image (a redelivery generates only what is missing), a cancel in the middle of the
third image, every image moderated, old consumers still finding `output`, and the colour check's
`candidates` being the same generation."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from huggingface_hub import constants
from PIL import Image

from pipeline import EditJob, StandInEditor
from pipeline.moderation.tiny import ensure_tiny_image_classifier
from schemas.errors import ErrorCode, InvalidEvent
from schemas.results import EditStatus
from tests.consumer.record_path.path import RecordPath, path_settings, png

pytestmark = pytest.mark.timeout(120)


def pixels(path: RecordPath, uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(path.store.read(uri))).convert("RGB"), dtype=np.int16)


async def test_four_images_have_their_own_seeds_objects_and_the_cost_is_the_sum(path: RecordPath) -> None:
    image = path.stage("a.png", png(64, 64))
    req = path.request(image, seed=10, num_images=4)
    assert await path.handle(req)
    result = path.result()
    assert result.status is EditStatus.SUCCEEDED, result.error
    assert [o.seed for o in result.outputs] == [10, 11, 12, 13]
    keys = [o.uri.rsplit("/", 1)[1] for o in result.outputs]
    assert keys == [f"{req.request_id}.png", *(f"{req.request_id}-{i}.png" for i in (1, 2, 3))]
    assert result.output == result.outputs[0]  # what a consumer of one image reads, unchanged
    assert len({o.sha256 for o in result.outputs}) == 4
    assert result.cost.images == 4
    assert result.cost.usd == pytest.approx(4 * 64 * 64 / 1e6 * 0.002, abs=1e-8)
    assert result.transformer_passes == 4 * 50
    first, second = (pixels(path, o.uri) for o in result.outputs[:2])
    assert np.abs(first - second).mean() >= 8  # different seeds, different pictures


async def test_a_redelivery_generates_only_the_images_not_stored_yet(path: RecordPath) -> None:
    image = path.stage("a.png", png(64, 64))
    req = path.request(image, seed=3, num_images=4)
    assert await path.handle(req, offset=7)
    first = path.result()
    # As if the worker had died after storing two of the four images.
    for output in first.outputs[2:]:
        del path.store.objects[output.uri.removeprefix("s3://")]

    assert await path.handle(req, offset=7)
    again = path.results()[-1]
    assert again.status is EditStatus.SUCCEEDED
    assert again.transformer_passes == 2 * 50  # only the two missing images were generated
    assert [o.seed for o in again.outputs] == [3, 4, 5, 6]
    assert [o.sha256 for o in again.outputs] == [o.sha256 for o in first.outputs]  # same seeds, same bytes
    assert again.cost == first.cost

    assert await path.handle(req, offset=7)  # all stored now: answered from S3 alone
    third = path.results()[-1]
    assert third.transformer_passes is None or third.gpu_ms == 0
    assert [o.sha256 for o in third.outputs] == [o.sha256 for o in first.outputs]


async def test_a_cancel_in_the_middle_of_the_third_image_stops_it_and_stores_nothing(
    make_path: Callable[..., RecordPath],
) -> None:
    holder: list[RecordPath] = []

    def cancel_on_third(job: EditJob) -> None:
        if job.seed == 22:  # the third image (seed 20 + 2) starts: the platform cancels
            holder[0].cancels.add("r-cancel-third")

    path = RecordPath(path_settings(), StandInEditor(edit_ms=50, fault=cancel_on_third))
    holder.append(path)
    try:
        image = path.stage("a.png", png(64, 64))
        req = path.request(image, seed=20, num_images=4)
        req = req.model_copy(update={"request_id": "r-cancel-third"})
        assert await path.handle(req)
        result = path.result()
        assert result.status is EditStatus.CANCELED
        assert result.error is not None
        assert "after step" in result.error.message
        assert result.cost.usd == 0
        assert not [k for k in path.store.objects if k.startswith("outputs/")]
    finally:
        path.close()


async def test_every_image_is_moderated_and_all_flagged_fails(make_path: Callable[..., RecordPath]) -> None:
    flagging = str(ensure_tiny_image_classifier(constants.HF_HUB_CACHE, label_bias=8.0))
    path = make_path(moderation={"model": flagging, "check_inputs": False})
    assert await path.handle(path.request(path.stage("a.png", png(64, 64)), num_images=3))
    result = path.result()
    assert result.error is not None
    assert result.error.code is ErrorCode.OUTPUT_MODERATED
    assert result.moderation is not None
    assert [s.part for s in result.moderation.outputs] == ["outputs[0]", "outputs[1]", "outputs[2]"]
    assert not [k for k in path.store.objects if k.startswith("outputs/")]


async def test_more_images_than_the_operator_allows_are_refused(make_path: Callable[..., RecordPath]) -> None:
    path = make_path(pipeline={"max_images": 2})
    assert await path.handle(path.request(path.stage("a.png", png(64, 64)), num_images=3))
    error = path.result().error
    assert error is not None
    assert error.code is ErrorCode.INVALID_EVENT
    assert "MAX_IMAGES" in error.message


async def test_a_result_reader_from_before_outputs_still_reads_the_result(path: RecordPath) -> None:
    """A reader whose model predates `outputs` reads today's result, and finds `output`: results are
    read without the misspelling rule (the worker writes them; `outputs` is a newer field, not a typo
    of `output`). Cancel commands, which people write, keep it."""
    from pydantic import create_model

    from consumer.kafka.codec import decode_event, encode_event
    from schemas._base import WireModel
    from schemas.results import EditCompleted

    fields = {n: (f.annotation, f) for n, f in EditCompleted.model_fields.items() if n != "outputs"}
    before: Any = create_model("EditCompleted", __base__=WireModel, **fields)  # type: ignore[call-overload]
    assert await path.handle(path.request(path.stage("a.png", png(64, 64)), num_images=2))
    result = path.result()
    seen: Any = decode_event(before, encode_event(result), reject_misspellings=False)
    assert seen.output == result.output
    with pytest.raises(InvalidEvent, match="did you mean 'output'"):
        decode_event(before, encode_event(result))  # the rule the cancel reader keeps


async def test_color_candidates_are_the_same_generation_as_num_images(path: RecordPath) -> None:
    """The colour check's `candidates` and `num_images` are one generation (seeds seed+i, one GPU job):
    the kept candidate is, pixel for pixel, the image of the same seed that num_images stores, and both
    run and bill the same images."""
    image = path.stage("a.png", png(64, 64))
    recolor = [{"target": "the square", "color": "#1E90FF"}]
    best_of = path.request(image, recolor=recolor, seed=40, color_qa={"mode": "measure", "candidates": 3})
    every = path.request(image, recolor=recolor, seed=40, num_images=3)
    assert await path.handle(best_of)
    assert await path.handle(every)
    kept, all_three = path.results()
    assert kept.status is EditStatus.SUCCEEDED, kept.error
    assert all_three.status is EditStatus.SUCCEEDED, all_three.error
    qa = kept.color_qa
    assert qa is not None
    assert [c.seed for c in qa.candidates] == [o.seed for o in all_three.outputs] == [40, 41, 42]
    chosen = qa.chosen_candidate
    assert kept.params is not None
    assert kept.params.seed == 40 + chosen
    assert kept.output is not None
    assert np.array_equal(pixels(path, kept.output.uri), pixels(path, all_three.outputs[chosen].uri))
    steps = kept.params.num_inference_steps
    assert kept.transformer_passes == all_three.transformer_passes == 3 * 2 * steps  # guidance: 2 a step
    assert kept.cost.images == all_three.cost.images == 3
    assert kept.cost.usd == all_three.cost.usd
