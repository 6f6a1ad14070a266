"""Moderation on the production record path, with the random-weight ViT classifier of the real class
loaded by the worker's loader. Verdicts come from the classifier's weights (a bias on the watched label)
or from the threshold against its known score, never from a code path the real classifier skips."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from huggingface_hub import constants

from pipeline.moderation.tiny import ensure_tiny_image_classifier
from schemas.errors import ErrorCode
from schemas.results import EditStatus
from tests.consumer.record_path.path import RecordPath, png

pytestmark = pytest.mark.timeout(60)
FLAGGING = 8.0  # a head bias that makes the watched label's probability > 0.999 for every image


def flagging_classifier() -> str:
    return str(ensure_tiny_image_classifier(constants.HF_HUB_CACHE, label_bias=FLAGGING))


def outputs_stored(path: RecordPath) -> list[str]:
    return [key for key in path.store.objects if key.startswith(f"{path.settings.s3.output_bucket}/")]


async def test_a_clean_edit_carries_its_scores_and_the_classifier_in_its_provenance(path: RecordPath) -> None:
    image = path.stage("a.png", png(64, 64))
    ref = path.stage("b.png", png(64, 64, (20, 200, 20)))
    assert await path.handle(path.request(image, references=[ref]))
    result = path.result()
    assert result.status is EditStatus.SUCCEEDED, result.error
    report = result.moderation
    assert report is not None
    assert report.model == "tiny-random-nsfw"
    assert report.threshold == 0.85
    assert [score.part for score in report.inputs] == ["image", "references[0]"]
    assert report.output is not None
    assert 0.0 <= report.output.score <= 0.85
    assert not report.output.flagged
    assert result.provenance is not None
    assert result.provenance.moderation is not None
    assert result.provenance.moderation.id == "tiny-random-nsfw"


async def test_a_flagged_output_is_withheld_not_retried_and_costs_nothing(
    make_path: Callable[..., RecordPath],
) -> None:
    path = make_path(moderation={"model": flagging_classifier(), "check_inputs": False})
    image = path.stage("a.png", png(64, 64))
    assert await path.handle(path.request(image))
    result = path.result()
    assert result.status is EditStatus.FAILED
    assert result.error is not None
    assert result.error.code is ErrorCode.OUTPUT_MODERATED
    assert result.error.retryable is False
    assert result.attempt == 1
    assert result.output is None
    assert result.cost.usd == 0
    assert result.gpu_ms > 0  # the edit ran
    assert result.moderation is not None
    assert result.moderation.output is not None
    assert result.moderation.output.flagged
    assert outputs_stored(path) == []  # nothing flagged ever reaches the output bucket
    assert path.dead_letters() == []


async def test_an_operator_may_bill_a_withheld_output(make_path: Callable[..., RecordPath]) -> None:
    path = make_path(
        moderation={"model": flagging_classifier(), "check_inputs": False},
        cost={"bill_moderated_outputs": True},
    )
    image = path.stage("a.png", png(64, 64))
    assert await path.handle(path.request(image))
    result = path.result()
    assert result.error is not None
    assert result.error.code is ErrorCode.OUTPUT_MODERATED
    assert result.cost.usd == pytest.approx(64 * 64 / 1e6 * 0.002, abs=1e-8)


async def test_a_flagged_input_stops_before_any_gpu_work_naming_the_part(
    make_path: Callable[..., RecordPath],
) -> None:
    path = make_path(moderation={"model": flagging_classifier()})
    image = path.stage("a.png", png(64, 64))
    assert await path.handle(path.request(image))
    result = path.result()
    assert result.error is not None
    assert result.error.code is ErrorCode.INPUT_MODERATED
    assert result.error.message.startswith("image: moderation score")
    assert result.gpu_ms == 0
    assert path.gpu.busy_seconds == 0  # no edit work at all
    assert result.cost.usd == 0
    assert outputs_stored(path) == []


async def test_a_flagged_prompt_names_the_rule_never_the_text(
    make_path: Callable[..., RecordPath], tmp_path: Path
) -> None:
    deny = tmp_path / "deny.txt"
    deny.write_text("# operator deny-list\ncontraband\n", encoding="utf-8")
    path = make_path(moderation={"deny_list": str(deny)})
    image = path.stage("a.png", png(64, 64))
    assert await path.handle(path.request(image, prompt="add some CONTRABAND to the shelf"))
    result = path.result()
    assert result.error is not None
    assert result.error.code is ErrorCode.INPUT_MODERATED
    assert result.error.message == "prompt: flagged by deny-list line 2"
    assert "contraband" not in json.dumps(result.model_dump(mode="json", exclude={"params"})).lower()
    assert result.gpu_ms == 0


async def test_a_request_may_be_stricter_never_looser(path: RecordPath) -> None:
    image = path.stage("a.png", png(64, 64))
    strict = path.request(image, moderation={"threshold": 0.0})  # every score is over 0: flagged
    looser = path.request(image, moderation={"threshold": 0.99})
    off = path.request(image, moderation={"enabled": False})
    for req in (strict, looser, off):
        assert await path.handle(req)
    by_id = {event.request_id: event for event in path.results()}
    assert by_id[strict.request_id].error is not None
    assert by_id[strict.request_id].error.code is ErrorCode.INPUT_MODERATED  # type: ignore[union-attr]
    for refused in (looser, off):
        error = by_id[refused.request_id].error
        assert error is not None
        assert error.code is ErrorCode.INVALID_EVENT
        assert "moderation." in error.message


async def test_an_operator_may_let_requests_turn_it_off(make_path: Callable[..., RecordPath]) -> None:
    path = make_path(moderation={"model": flagging_classifier(), "allow_request_disable": True})
    image = path.stage("a.png", png(64, 64))
    assert await path.handle(path.request(image, moderation={"enabled": False}))
    result = path.result()
    assert result.status is EditStatus.SUCCEEDED
    assert result.moderation is None


async def test_metrics_count_moderation_outcomes_by_kind(make_path: Callable[..., RecordPath]) -> None:
    path = make_path()
    image = path.stage("a.png", png(64, 64))
    assert await path.handle(path.request(image))
    assert await path.handle(path.request(image, moderation={"threshold": 0.0}))
    registry = path.metrics.registry

    def count(kind: str) -> float:
        return registry.get_sample_value("klein_edit_moderation_outcomes_total", {"kind": kind}) or 0.0

    assert count("passed") == 1
    assert count("input_flagged") == 1
