"""Self-recycling with real worker processes: a worker with a limit of 3 edits, under a backlog of 10,
drains and exits 75 each time it reaches the limit; restarted as Kubernetes would restart it, the
workers answer all 10 requests once each, with 10 objects and the offsets committed to the end."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import pytest

from consumer.settings import Settings
from consumer.worker import EXIT_RECYCLE
from schemas.results import EditStatus
from tests.consumer.harness import (
    WorkerProcess,
    assert_one_output_per_request,
    no_lag,
    output_objects,
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


async def test_a_worker_at_its_edit_limit_drains_exits_75_and_its_restarts_finish_the_backlog(
    make_settings: Callable[..., Settings], worker_processes: StartWorker
) -> None:
    settings = make_settings(worker={"max_in_flight": 2})
    store = await prepare(settings)
    image = stage_image(store, settings, "a.png", png_bytes(64, 64))
    requests = [request(settings, image, seed=i) for i in range(10)]
    for req in requests:
        await publish(settings, req)

    async def answered() -> int:
        events = await results(settings, count=len(requests), timeout_s=1.0)
        return len({e.request_id for e in events})

    exits: list[int] = []
    for _ in range(6):  # 10 records at 3 per process: 3 recycles, then one that finishes the backlog
        worker = worker_processes(settings, "standin:50", max_edits=3)
        while worker.returncode is None and await answered() < len(requests):
            await asyncio.sleep(0.5)
        if worker.returncode is None:  # the backlog is done before this one's limit: stop it as usual
            worker.signal(signal.SIGTERM)
            exits.append(await worker.wait_exit(30))
            break
        exits.append(worker.returncode)
        assert worker.events("worker.recycling"), worker.log_text()[-2000:]
    assert exits[:-1] == [EXIT_RECYCLE] * (len(exits) - 1), exits
    assert len(exits) >= 4, exits  # at least 3 recycles for 10 records at 3 each
    assert exits[-1] in (0, EXIT_RECYCLE), exits

    events = await results(settings, count=len(requests), settle_s=1.0)
    assert {e.request_id for e in events} == {r.request_id for r in requests}
    assert all(e.status is EditStatus.SUCCEEDED for e in events)
    assert len(events) == len(requests), "a request was answered twice"
    assert await wait_for_no_lag(settings) == no_lag(settings)
    assert_one_output_per_request(events, output_objects(store, settings))
