"""Nothing lost, nothing done twice: duplicates, kills, SIGTERM drains and rebalances mid-edit.

Crashes and signals use real worker processes (`tests.consumer.worker_process`) against the session's
Tansu broker and moto server; the stand-in editor makes each edit last a chosen time.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Callable

import pytest
from aiokafka.partitioner import DefaultPartitioner

from consumer.settings import Settings
from pipeline import StandInEditor
from schemas.requests import EditRequest
from schemas.results import EditStatus
from storage import ImageStore
from tests.consumer.harness import (
    WorkerProcess,
    assert_one_output_per_request,
    by_request,
    lag,
    no_lag,
    output_objects,
    png_bytes,
    prepare,
    publish,
    request,
    results,
    running_worker,
    stage_image,
    wait_for_attempt_record,
    wait_for_no_lag,
)

pytestmark = pytest.mark.integration

StartWorker = Callable[..., WorkerProcess]


async def edit_in_progress(
    settings: Settings, worker_processes: StartWorker, spec: str, *, running_s: float
) -> tuple[ImageStore, EditRequest, WorkerProcess]:
    """A worker process (`spec`) that has been editing one fresh request for about `running_s`."""
    store = await prepare(settings)
    req = request(settings, stage_image(store, settings, "a.png", png_bytes(64, 64)))
    worker = worker_processes(settings, spec)
    await worker.wait_assigned()
    await publish(settings, req)
    await wait_for_attempt_record(store, settings)  # its GPU run has started
    await asyncio.sleep(running_s)
    return store, req, worker


async def test_duplicate_request_is_answered_from_s3_without_a_second_gpu_run(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    store = await prepare(settings)
    req = request(settings, stage_image(store, settings, "a.png", png_bytes(64, 64)))
    editor = StandInEditor(edit_ms=50)
    async with running_worker(settings, lambda: editor):
        await publish(settings, req)
        await results(settings, count=1)
        await publish(settings, req)  # same request_id again: a producer retry, a replay, a resubmit
        events = await results(settings, count=2)
        assert await wait_for_no_lag(settings) == no_lag(settings)

    first, second = events
    assert first.request_id == second.request_id == req.request_id
    assert first.status is second.status is EditStatus.SUCCEEDED
    assert first.output == second.output  # the same object, same sha256: republished, not redone
    assert first.params == second.params
    assert first.cost == second.cost
    assert second.gpu_ms == 0
    assert editor.edits == 1
    assert_one_output_per_request(events, output_objects(store, settings))


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_sigkill_mid_edit_then_a_new_worker_redoes_the_request_once(
    make_settings: Callable[..., Settings], worker_processes: StartWorker
) -> None:
    settings = make_settings()
    # 1.5 s into an 8 s edit.
    store, req, first = await edit_in_progress(settings, worker_processes, "standin:8000", running_s=1.5)
    first.signal(signal.SIGKILL)
    assert await first.wait_exit(10) == -signal.SIGKILL
    assert output_objects(store, settings) == {}
    assert sum((await lag(settings)).values()) == 1  # the killed edit was never committed

    second = worker_processes(settings, "standin:500")
    (result,) = await results(settings, count=1, timeout_s=60)
    assert await wait_for_no_lag(settings) == no_lag(settings)
    second.signal(signal.SIGTERM)
    assert await second.wait_exit(30) == 0

    assert result.request_id == req.request_id
    assert result.status is EditStatus.SUCCEEDED
    assert result.attempt == 2  # the ledger in S3 survived the kill
    assert result.worker == second.name
    assert_one_output_per_request([result], output_objects(store, settings))


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_sigterm_mid_edit_finishes_it_within_the_grace_period(
    make_settings: Callable[..., Settings], worker_processes: StartWorker
) -> None:
    settings = make_settings(worker={"drain_grace_s": 20})
    store, _, worker = await edit_in_progress(settings, worker_processes, "standin:5000", running_s=1.0)
    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit(30) == 0
    assert worker.events("worker.draining")
    assert not worker.events("worker.abandoning")

    (result,) = await results(settings, count=1, timeout_s=5)
    assert result.status is EditStatus.SUCCEEDED
    assert result.attempt == 1
    assert await lag(settings) == no_lag(settings)  # committed before the process exited
    assert_one_output_per_request([result], output_objects(store, settings))


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_sigterm_with_a_grace_shorter_than_the_edit_exits_uncommitted_and_the_next_worker_redoes_it(
    make_settings: Callable[..., Settings], worker_processes: StartWorker
) -> None:
    settings = make_settings(worker={"drain_grace_s": 1})
    store, _, first = await edit_in_progress(settings, worker_processes, "standin:15000", running_s=1.0)
    first.signal(signal.SIGTERM)
    assert await first.wait_exit(10) == 0  # long before the 15 s edit would have ended
    assert first.events("worker.abandoning")
    assert sum((await lag(settings)).values()) == 1
    assert output_objects(store, settings) == {}

    second = worker_processes(settings, "standin:300")
    (result,) = await results(settings, count=1, timeout_s=60)
    assert await wait_for_no_lag(settings) == no_lag(settings)
    second.signal(signal.SIGTERM)
    assert await second.wait_exit(30) == 0
    assert result.status is EditStatus.SUCCEEDED
    assert result.attempt == 2
    assert result.worker == second.name
    assert_one_output_per_request([result], output_objects(store, settings))


def _requests_for_each_partition(settings: Settings, image: str, per_partition: int) -> list[EditRequest]:
    """Requests whose keys (request ids) land `per_partition` on each partition of the request topic."""
    partitioner = DefaultPartitioner()
    partitions = list(range(settings.kafka.topic_partitions))
    wanted = {p: per_partition for p in partitions}
    chosen: list[EditRequest] = []
    while any(wanted.values()):
        req = request(settings, image, request_id=f"r-{uuid.uuid4().hex[:12]}")
        p = partitioner(req.request_id.encode(), partitions, partitions)
        if wanted[p]:
            wanted[p] -= 1
            chosen.append(req)
    return chosen


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_rebalance_in_the_middle_of_long_edits_skips_and_forks_nothing(
    make_settings: Callable[..., Settings], worker_processes: StartWorker
) -> None:
    # Edits of 4 s with max_poll_interval 2 s: only polling while paused keeps the members in the group.
    settings = make_settings(kafka={"max_poll_interval_ms": 2000}, worker={"max_in_flight": 2})
    store = await prepare(settings)
    image = stage_image(store, settings, "a.png", png_bytes(64, 64))
    reqs = _requests_for_each_partition(settings, image, 3)
    first = worker_processes(settings, "standin:4000")
    await first.wait_assigned()
    for req in reqs:
        await publish(settings, req)
    await wait_for_attempt_record(store, settings)
    await asyncio.sleep(1.0)
    second = worker_processes(settings, "standin:4000")  # joins mid-edit: the group rebalances
    await second.wait_assigned()

    # Lag 0 first: `results` returns once enough events arrived, and a redelivered request's repeated
    # result would count towards that before the last request is answered.
    assert await wait_for_no_lag(settings, timeout_s=90) == no_lag(settings)
    events = await results(settings, count=len(reqs), timeout_s=10, settle_s=1.0)
    for worker in (first, second):
        worker.signal(signal.SIGTERM)
    assert await first.wait_exit(30) == 0
    assert await second.wait_exit(30) == 0

    grouped = by_request(events)
    assert set(grouped) == {r.request_id for r in reqs}  # every request answered, nothing skipped
    assert all(e.status is EditStatus.SUCCEEDED for e in events)
    assert_one_output_per_request(events, output_objects(store, settings))  # nothing forked
    # Both members really did work, across at least one rebalance of the first.
    assert first.events("edit.completed")
    assert second.events("edit.completed")
    assert len(first.events("partitions.assigned")) >= 2
