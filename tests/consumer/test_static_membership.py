"""Static membership with real worker processes: a SIGKILLed worker that comes back under the same
`group_instance_id` gets its partitions back, and the other worker keeps its own throughout.

It prints how long the killed worker's partitions went unserved; docs/operations.md ("Static
membership") has the figures, and those of the same drill with dynamic members (`static=False`).
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Callable

import pytest

from consumer.kafka import clients as kafka_io
from consumer.settings import Settings
from schemas.results import EditStatus
from tests.consumer.harness import (
    WorkerProcess,
    no_lag,
    png_bytes,
    prepare,
    publish,
    request,
    results,
    stage_image,
    wait_for_no_lag,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

StartWorker = Callable[..., WorkerProcess]
PARTITIONS = 4
# Long enough for a SIGKILLed worker process to start again on a busy 2-core machine (~5-20 s); a
# static member that is not back within it is expired and the group rebalances after all.
SESSION_TIMEOUT_MS = 45_000


def _member(settings: Settings, instance: str | None) -> Settings:
    return settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"group_instance_id": instance})}
    )


def _assignments(worker: WorkerProcess) -> list[list[str]]:
    return [event["partitions"] for event in worker.events("partitions.assigned")]


def _current(worker: WorkerProcess) -> list[str]:
    assignments = _assignments(worker)
    return assignments[-1] if assignments else []


async def _kill_and_restart(
    make_settings: Callable[..., Settings], worker_processes: StartWorker, *, static: bool
) -> tuple[WorkerProcess, WorkerProcess, WorkerProcess, float, Settings, int]:
    """Workers A then B join; B is SIGKILLed and started again. Returns (A, B, B again, seconds from
    the kill until B again had its partitions, settings, how many assignments A had at the kill)."""
    settings = make_settings(
        kafka={
            "session_timeout_ms": SESSION_TIMEOUT_MS,
            "rebalance_timeout_ms": SESSION_TIMEOUT_MS,
            "topic_partitions": PARTITIONS,
        }
    )
    await prepare(settings)
    # The control topic too, or each worker waits for its control reader to give up (15 s) first.
    await kafka_io.ensure_topics(settings.kafka, [settings.kafka.control_topic])
    tag = uuid.uuid4().hex[:6]
    a_settings = _member(settings, f"{tag}-a" if static else None)
    b_settings = _member(settings, f"{tag}-b" if static else None)
    a = worker_processes(a_settings, "standin:20")
    await a.wait_assigned()
    b = worker_processes(b_settings, "standin:20")
    deadline = time.monotonic() + 90
    while not (_current(a) and _current(b) and len(_current(a)) + len(_current(b)) == PARTITIONS):
        assert time.monotonic() < deadline, (_assignments(a), _assignments(b))
        await asyncio.sleep(0.1)  # until the group settled with both members holding partitions
    await asyncio.sleep(1.0)

    settled = len(_assignments(a))
    b.signal(signal.SIGKILL)
    await b.wait_exit()
    killed = time.monotonic()
    again = worker_processes(b_settings, "standin:20")
    deadline = killed + 60
    while not any(_assignments(again)):  # an empty assignment does not count: B wants its partitions
        assert time.monotonic() < deadline, again.log_text()[-3000:]
        await asyncio.sleep(0.1)
    return a, b, again, time.monotonic() - killed, settings, settled


async def _edits_flow(settings: Settings) -> None:
    store = await prepare(settings)
    image = stage_image(store, settings, "a.png", png_bytes(64, 64))
    sent = [request(settings, image, seed=i) for i in range(8)]
    for req in sent:
        await publish(settings, req)
    events = await results(settings, count=len(sent))
    assert {e.request_id for e in events} == {r.request_id for r in sent}
    assert [e.error for e in events if e.status is not EditStatus.SUCCEEDED] == []
    assert await wait_for_no_lag(settings) == no_lag(settings)


async def test_a_restarted_static_member_gets_its_partitions_back_and_the_other_keeps_its_own(
    make_settings: Callable[..., Settings], worker_processes: StartWorker
) -> None:
    a, b, again, took_s, settings, settled = await _kill_and_restart(
        make_settings, worker_processes, static=True
    )
    print(f"\nstatic membership: the killed worker's partitions were served again after {took_s:.1f} s")

    assert _current(again) == _current(b)  # the same partitions, handed straight back
    await _edits_flow(settings)
    # A kept its partitions through B's death and return: no partition moved. (When B had been the
    # group's leader, its return runs one rebalance that hands every member the same partitions.)
    after_kill = _assignments(a)[settled:]
    print(f"static membership: the other worker went through {len(after_kill)} rebalance(s), same partitions")
    assert all(partitions == _assignments(a)[settled - 1] for partitions in after_kill), _assignments(a)
    assert len(after_kill) <= 1, _assignments(a)
    assert sorted(_current(a) + _current(again)) == sorted(
        f"{settings.kafka.request_topic}-{p}" for p in range(PARTITIONS)
    )
