"""Progress events, cancellation and priority lanes, on a real broker and S3 with running workers."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Callable

import pytest

from consumer.cli.local_client import EditClient
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

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


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
    # The GPU time spent before the cancel is the inference time, not 0 (it ran no other stage).
    assert result.timing_ms.inference == pytest.approx(result.gpu_ms, abs=1.0)
    assert output_objects(store, settings) == {}
    assert set(lags.values()) == {0}


async def drain_backlogs(
    make_settings: Callable[..., Settings], lanes: list[str], backlog: dict[str, int]
) -> list[str]:
    """Run one worker (share 0.25, 2 in flight, 300 ms edits) over backlogs published before it starts.

    `lanes` are in priority order, the last one being the plain request topic; `backlog[lane]` requests
    named `lane-<i>` go to each. Returns the request ids in the order their results came, after checking
    that every one succeeded, nothing is left uncommitted and each has exactly one object.
    """
    settings = make_settings(kafka={"low_lane_share": 0.25}, worker={"max_in_flight": 2})
    base = settings.kafka.request_topic
    topics = {lane: f"{base}.{lane}" for lane in lanes[:-1]} | {lanes[-1]: base}
    priority = [topics[lane] for lane in lanes[:-1]]
    settings = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"priority_topics": priority})}
    )
    store = await prepare(settings)
    image = stage_image(store, settings, "l.png", png_bytes(64, 64))
    expected = [f"{lane}-{i}" for lane, count in backlog.items() for i in range(count)]
    for request_id in expected:
        lane = request_id.rsplit("-", 1)[0]
        await publish(settings, request(settings, image, request_id=request_id), topic=topics[lane])

    async with running_worker(settings, lambda: StandInEditor(edit_ms=300)):
        finished = await results(settings, count=len(expected), timeout_s=90)
        lags = await wait_for_no_lag(settings)

    order = [r.request_id for r in finished]
    assert sorted(order) == sorted(expected)
    assert all(r.status is EditStatus.SUCCEEDED for r in finished)
    assert set(lags.values()) == {0}
    assert len(output_objects(store, settings)) == len(expected)
    return order


def positions(order: list[str], lane: str) -> list[int]:
    return [i for i, request_id in enumerate(order) if request_id.startswith(f"{lane}-")]


async def test_urgent_lane_goes_first_and_the_low_lane_still_moves(
    make_settings: Callable[..., Settings],
) -> None:
    order = await drain_backlogs(make_settings, ["urgent", "low"], {"low": 6, "urgent": 6})
    last_urgent = max(positions(order, "urgent"))
    # Urgent work finishes well before the low lane's backlog ...
    assert last_urgent < max(positions(order, "low"))
    assert sum(1 for i in positions(order, "urgent") if i < 6) >= 4
    # ... but the low lane is not starved while urgent work remains.
    assert 1 <= sum(1 for i in positions(order, "low") if i < last_urgent) <= 3


async def test_with_three_lanes_the_lowest_moves_while_the_middle_one_has_a_backlog(
    make_settings: Callable[..., Settings],
) -> None:
    """The top lane is empty: the share works between whichever lanes have work, so `bulk` is not
    held back until `normal` is drained."""
    order = await drain_backlogs(make_settings, ["urgent", "normal", "bulk"], {"bulk": 4, "normal": 8})
    last_normal = max(positions(order, "normal"))
    assert sum(1 for i in positions(order, "normal") if i < 6) >= 4  # normal goes first ...
    assert 1 <= sum(1 for i in positions(order, "bulk") if i < last_normal) <= 3  # ... bulk still moves
