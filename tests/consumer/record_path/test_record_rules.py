"""Rules of one record on the production handler and stages, with fakes of S3, the ledger and Kafka.

Each rule here once needed a worker on a broker (5-7 s a test); here it takes milliseconds. The broker
tests keep one end-to-end case of each kind.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable

import pytest
from PIL import Image

from consumer.sink import META_REQUEST_ID
from schemas.errors import ErrorCode
from schemas.results import EditStatus
from tests.consumer.record_path.path import RecordPath, png

pytestmark = pytest.mark.timeout(60)


async def test_an_edit_is_stored_billed_and_answered(path: RecordPath) -> None:
    image = path.stage("shots/shoe.png", png(160, 96))
    req = path.request(
        image, recolor=[{"target": "the shoe", "color": "#1E90FF"}], seed=7, metadata={"sku": "A-1"}
    )

    assert await path.handle(req)

    result = path.result()
    assert result.status is EditStatus.SUCCEEDED, result.error
    assert result.output is not None
    assert result.params is not None
    assert result.output.uri == f"s3://outputs/edits/{req.request_id}.png"
    assert (result.output.width, result.output.height) == (160, 96)
    assert result.params.seed == 7
    assert "#1E90FF" in result.params.prompt
    assert result.cost.usd == pytest.approx(160 * 96 / 1e6 * 0.002)
    assert result.metadata == {"sku": "A-1"}
    assert result.transformer_passes == 2 * 25  # 25 steps, cond + uncond
    assert result.provenance is not None
    assert result.provenance.inputs[0].uri == image
    stored = path.store.objects[f"outputs/edits/{req.request_id}.png"]
    assert stored.metadata[META_REQUEST_ID] == req.request_id
    assert Image.open(io.BytesIO(stored.data)).size == (160, 96)
    assert path.dead_letters() == []
    assert path.ledger.entries == {} or all(e.gpu_runs <= 1 for e in path.ledger.entries.values())


async def test_a_redelivered_request_is_answered_from_s3_without_the_gpu(path: RecordPath) -> None:
    image = path.stage("a.png", png(64, 64))
    req = path.request(image, seed=3)
    assert await path.handle(req, offset=5)
    busy_after_first = path.gpu.busy_seconds
    reads_after_first = len(path.store.reads)

    assert await path.handle(req, offset=5)

    first, second = path.results()
    assert second.status is EditStatus.SUCCEEDED
    assert second.output == first.output
    assert second.params == first.params
    assert second.cost == first.cost
    assert second.provenance == first.provenance
    assert path.gpu.busy_seconds == busy_after_first  # no GPU work
    assert len(path.store.reads) == reads_after_first  # no input read


@pytest.mark.parametrize("num_images", [1, 2])
async def test_a_worker_that_loses_the_upload_race_answers_with_the_stored_objects(
    path: RecordPath, num_images: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another worker stored the same request's outputs while this one edited (its stage 3 found none):
    the conditional put keeps the other worker's objects, and the answer is theirs."""
    req = path.request(path.stage("a.png", png(64, 64)), seed=3, num_images=num_images)
    assert await path.handle(req, offset=5)
    stored = dict(path.store.objects)
    found = path.store.find_output
    calls = iter(range(10_000))
    # The first lookups (stage 3, one per image) miss, as if the other worker had not finished yet.
    monkeypatch.setattr(
        path.store, "find_output", lambda loc: None if next(calls) < num_images else found(loc)
    )

    assert await path.handle(req, offset=5)

    first, second = path.results()
    assert path.gpu_runs == 2  # this worker did edit, and lost the race
    assert second.status is EditStatus.SUCCEEDED
    assert second.outputs == first.outputs
    assert second.provenance == first.provenance
    assert path.store.objects == stored  # nothing overwritten


async def test_over_the_output_area_fails_before_any_gpu_work_with_cost_0(path: RecordPath) -> None:
    image = path.stage("limits/a.png", png(64, 64))
    req = path.request(image, width=2048, height=2048)  # 4.19 MP > 4 MP

    assert await path.handle(req)

    result = path.result()
    assert result.status is EditStatus.FAILED
    assert result.error is not None
    assert result.error.code is ErrorCode.INVALID_EVENT
    assert "4.19 MP" in result.error.message
    assert "MAX_OUTPUT_MEGAPIXELS" in result.error.message
    assert result.cost.usd == 0
    assert result.gpu_ms == 0
    assert path.store.reads == []  # refused before the input was read
    assert len(path.dead_letters()) == 1  # a request no worker can run is dead-lettered


async def test_too_many_references_and_a_passed_deadline_are_refused(
    make_path: Callable[..., RecordPath],
) -> None:
    path = make_path(pipeline={"max_references": 1})
    image = path.stage("a.png", png(64, 64))
    assert await path.handle(path.request(image, references=[image, image]))
    assert await path.handle(path.request(image, deadline="2020-01-01T00:00:00Z"))
    refs, late = path.results()
    assert refs.error is not None
    assert "at most 1 allowed" in refs.error.message
    assert late.error is not None
    assert late.error.code is ErrorCode.DEADLINE_EXCEEDED
    assert late.status is EditStatus.FAILED


async def test_an_over_long_prompt_fails_before_any_gpu_work(path: RecordPath) -> None:
    image = path.stage("a.png", png(64, 64))
    assert await path.handle(path.request(image, prompt=" ".join(f"x{i}q" for i in range(300))))
    result = path.result()
    assert result.error is not None
    assert result.error.code is ErrorCode.INVALID_EVENT
    assert "over the text encoder's limit of 512" in result.error.message
    assert result.gpu_ms == 0


async def test_a_missing_input_fails_and_names_it(path: RecordPath) -> None:
    assert await path.handle(path.request("s3://inputs/nope.png"))
    result = path.result()
    assert result.status is EditStatus.FAILED
    assert result.error is not None
    assert "s3://inputs/nope.png" in result.error.message


@pytest.mark.parametrize(
    "value",
    [
        b"not json",
        b"{}",
        json.dumps({"request_id": "r-1", "image": 5}).encode(),
        b"[" * 100_000 + b"]" * 100_000,
    ],
    ids=["not-json", "empty-object", "wrong-type", "json-bomb"],
)
async def test_an_undecodable_record_is_refused_and_dead_lettered(path: RecordPath, value: bytes) -> None:
    assert await path.handle(value, key=b"k", headers=[("traceparent", b"00-abc-def-01")])
    result = path.result()
    assert result.status is EditStatus.FAILED
    assert result.error is not None
    assert result.error.code is ErrorCode.INVALID_EVENT
    (dead,) = path.dead_letters()
    assert dead.key == b"k"
    assert ("traceparent", b"00-abc-def-01") in dead.headers


async def test_a_tombstone_is_skipped_without_a_result(path: RecordPath) -> None:
    assert await path.handle(None, key=b"k")
    assert path.results() == []
    assert path.dead_letters() == []


async def test_a_request_canceled_before_pickup_is_canceled_at_cost_0(path: RecordPath) -> None:
    image = path.stage("a.png", png(64, 64))
    req = path.request(image)
    path.cancels.add(req.request_id)
    assert await path.handle(req)
    result = path.result()
    assert result.status is EditStatus.CANCELED
    assert result.error is not None
    assert "before pickup" in result.error.message
    assert result.cost.usd == 0
    assert path.store.reads == []


async def test_progress_events_follow_the_stages(path: RecordPath) -> None:
    image = path.stage("a.png", png(64, 64))
    assert await path.handle(path.request(image, progress=True))
    stages = [json.loads(r.value or b"{}")["stage"] for r in path.progress()]
    assert stages[0] == "fetching"
    assert "editing" in stages
    assert stages[-1] == "uploading"


async def test_a_record_whose_gpu_run_crashed_the_worker_too_often_is_poison(path: RecordPath) -> None:
    image = path.stage("a.png", png(64, 64))
    req = path.request(image)
    for _ in range(path.settings.worker.max_attempts):
        path.ledger.record_gpu_run("edit.requests", 0, 9)
    assert await path.handle(req, offset=9)
    result = path.result()
    assert result.status is EditStatus.FAILED
    assert result.error is not None
    assert "started 3 times without finishing" in result.error.message
    assert len(path.dead_letters()) == 1
