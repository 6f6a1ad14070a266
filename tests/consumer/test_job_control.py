"""Progress events, cancellation and priority lanes, on a real broker and S3 with running workers."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Callable

import pytest

from consumer.client import EditClient
from consumer.settings import Settings
from pipeline import StandInEditor
from schemas.control import CancelRequested
from schemas.progress import EditProgressed, EditStage
from schemas.results import EditStatus
from tests.consumer.harness import (
    output_objects,
    png_bytes,
    prepare,
    publish,
    read_topic,
    request,
    results,
    running_worker,
    stage_image,
    wait_for_no_lag,
)

pytestmark = pytest.mark.integration


async def cancel(settings: Settings, request_id: str) -> None:
    async with EditClient(settings.kafka) as client:
        await client.cancel(CancelRequested(request_id=request_id))


async def progress_events(settings: Settings, count: int, settle_s: float = 1.5) -> list[EditProgressed]:
    records = await read_topic(
        settings, settings.kafka.progress_topic, count=count, timeout_s=30, settle_s=settle_s
    )
    return [EditProgressed.model_validate_json(r.value) for r in records if r.value]


async def test_progress_events_arrive_in_order_throttled_and_stop_at_completion(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(worker={"progress_interval_s": 1.0})
    store = await prepare(settings)
    image = stage_image(store, settings, "p.png", png_bytes(64, 64))
    req = request(settings, image, progress=True, num_inference_steps=25)
    quiet = request(settings, image)  # did not ask for progress
    async with running_worker(settings, lambda: StandInEditor(edit_ms=3500)):
        await publish(settings, req)
        await publish(settings, quiet)
        by_id = {r.request_id: r for r in await results(settings, count=2, timeout_s=60)}

    events = await progress_events(settings, count=4)
    assert {e.request_id for e in events} == {req.request_id}
    stages = [e.stage for e in events]
    assert stages[0] is EditStage.FETCHING
    assert stages[-1] is EditStage.UPLOADING
    assert stages == sorted(stages, key=[EditStage.FETCHING, EditStage.EDITING, EditStage.UPLOADING].index)
    steps = [e for e in events if e.stage is EditStage.EDITING]
    assert [e.step for e in steps] == sorted(e.step for e in steps)
    assert all(e.total_steps == 25 for e in steps)
    # At most one a second besides the stage changes: a 3.5 s edit gives at most ~4 step events.
    assert 2 <= len(steps) <= 6
    timed = [e for e in steps if e.step > 0]
    for earlier, later in itertools.pairwise(timed):
        assert (later.at - earlier.at).total_seconds() >= 0.9
    assert any(e.eta_ms is not None and e.eta_ms > 0 for e in timed)
    assert all(e.at <= by_id[req.request_id].completed_at for e in events)


async def test_cancel_before_pickup_skips_the_request(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    store = await prepare(settings)
    image = stage_image(store, settings, "c.png", png_bytes(64, 64))
    doomed, kept = request(settings, image), request(settings, image)
    await cancel(settings, doomed.request_id)
    await cancel(settings, "no-such-request")  # an unknown id is harmless
    await publish(settings, doomed)
    await publish(settings, kept)
    editor = StandInEditor(edit_ms=50)
    async with running_worker(settings, lambda: editor):
        by_id = {r.request_id: r for r in await results(settings, count=2)}
        assert set((await wait_for_no_lag(settings)).values()) == {0}

    skipped = by_id[doomed.request_id]
    assert skipped.status is EditStatus.CANCELED
    assert skipped.error is not None
    assert skipped.error.code.value == "CANCELED"
    assert skipped.cost.usd == 0
    assert skipped.output is None
    assert skipped.gpu_ms == 0
    assert by_id[kept.request_id].status is EditStatus.SUCCEEDED
    assert editor.edits == 1
    assert list(output_objects(store, settings)) == [f"edits/{kept.request_id}.png"]


async def test_cancel_mid_edit_stops_within_a_step_and_stores_nothing(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    store = await prepare(settings)
    image = stage_image(store, settings, "m.png", png_bytes(64, 64))
    req = request(settings, image, num_inference_steps=25, progress=True)
    # 25 steps of 800 ms: a 20 s edit, long enough that a slow CI runner still cancels it mid-way.
    step_ms = 800
    async with running_worker(settings, lambda: StandInEditor(edit_ms=25 * step_ms)):
        await publish(settings, req)
        while not any(e.stage is EditStage.EDITING for e in await progress_events(settings, 2, settle_s=0)):
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        await cancel(settings, req.request_id)
        (result,) = await results(settings, count=1, timeout_s=30)
        lags = await wait_for_no_lag(settings)

    assert result.status is EditStatus.CANCELED
    assert result.cost.usd == 0
    assert result.output is None
    assert result.error is not None
    # "... after step 3/25": the edit stopped at the step boundary right after the cancel was seen,
    # having run ~1 s past its first progress event, nowhere near the whole 20 s edit.
    match = re.search(r"after step (\d+)/25", result.error.message)
    assert match is not None, result.error.message
    steps_done = int(match.group(1))
    assert steps_done * step_ms <= result.gpu_ms < (steps_done + 1) * step_ms
    assert 1000 <= result.gpu_ms < 25 * step_ms / 2
    assert output_objects(store, settings) == {}
    assert set(lags.values()) == {0}


async def test_urgent_lane_goes_first_and_the_low_lane_still_moves(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(kafka={"low_lane_share": 0.25}, worker={"max_in_flight": 2})
    urgent_topic = f"{settings.kafka.request_topic}.urgent"
    settings = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"priority_topics": [urgent_topic]})}
    )
    store = await prepare(settings)
    image = stage_image(store, settings, "l.png", png_bytes(64, 64))
    low = [request(settings, image, request_id=f"low-{i}") for i in range(6)]
    urgent = [request(settings, image, request_id=f"urgent-{i}") for i in range(6)]
    for req in low:
        await publish(settings, req)
    for req in urgent:
        await publish(settings, req, topic=urgent_topic)

    async with running_worker(settings, lambda: StandInEditor(edit_ms=300)):
        finished = await results(settings, count=12, timeout_s=90)
        lags = await wait_for_no_lag(settings)

    order = [r.request_id for r in finished]
    assert sorted(order) == sorted(r.request_id for r in low + urgent)
    last_urgent = max(order.index(r.request_id) for r in urgent)
    low_before_last_urgent = [i for i in order[:last_urgent] if i.startswith("low")]
    # Urgent work finishes well before the low lane's backlog ...
    assert last_urgent < max(order.index(r.request_id) for r in low)
    assert sum(1 for i in order[:6] if i.startswith("urgent")) >= 4
    # ... but the low lane is not starved while urgent work remains.
    assert 1 <= len(low_before_last_urgent) <= 3
    assert set(lags.values()) == {0}
    assert len(output_objects(store, settings)) == 12


async def test_with_three_lanes_the_lowest_moves_while_the_middle_one_has_a_backlog(
    make_settings: Callable[..., Settings],
) -> None:
    """The top lane is empty: the share works between whichever lanes have work, so `bulk` is not
    held back until `normal` is drained."""
    settings = make_settings(kafka={"low_lane_share": 0.25}, worker={"max_in_flight": 2})
    base = settings.kafka.request_topic
    urgent_topic, normal_topic = f"{base}.urgent", f"{base}.normal"
    settings = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"priority_topics": [urgent_topic, normal_topic]})}
    )
    store = await prepare(settings)
    image = stage_image(store, settings, "t.png", png_bytes(64, 64))
    normal = [request(settings, image, request_id=f"normal-{i}") for i in range(8)]
    bulk = [request(settings, image, request_id=f"bulk-{i}") for i in range(4)]
    for req in bulk:
        await publish(settings, req)  # the default request topic: the lowest lane
    for req in normal:
        await publish(settings, req, topic=normal_topic)

    async with running_worker(settings, lambda: StandInEditor(edit_ms=300)):
        finished = await results(settings, count=12, timeout_s=90)
        lags = await wait_for_no_lag(settings)

    order = [r.request_id for r in finished]
    assert sorted(order) == sorted(r.request_id for r in normal + bulk)
    last_normal = max(order.index(r.request_id) for r in normal)
    bulk_before_last_normal = [i for i in order[:last_normal] if i.startswith("bulk")]
    assert sum(1 for i in order[:6] if i.startswith("normal")) >= 4  # normal goes first ...
    assert 1 <= len(bulk_before_last_normal) <= 3  # ... but bulk is not starved behind it
    assert all(r.status is EditStatus.SUCCEEDED for r in finished)
    assert set(lags.values()) == {0}
    assert len(output_objects(store, settings)) == 12
