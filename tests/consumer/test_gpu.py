"""GpuThread: one dedicated thread, busy-time accounting, lane priority with a share, cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator

import pytest

from consumer.gpu import GpuThread


@pytest.fixture
def lane() -> Iterator[GpuThread]:
    gpu = GpuThread()
    yield gpu
    gpu.shutdown(wait=True)


# --- GpuThread ---------------------------------------------------------------------------------------


async def test_lane_returns_the_result_and_passes_arguments(lane: GpuThread) -> None:
    def add(a: int, b: int, *, scale: int = 1) -> int:
        return (a + b) * scale

    assert await lane.run(add, 2, 3, scale=10) == 50


async def test_lane_runs_everything_on_one_dedicated_thread(lane: GpuThread) -> None:
    def whoami() -> tuple[int, str]:
        current = threading.current_thread()
        return current.ident or 0, current.name

    seen = [await lane.run(whoami) for _ in range(5)]
    seen += await asyncio.gather(*(lane.run(whoami) for _ in range(5)))
    idents = {ident for ident, _ in seen}
    names = {name for _, name in seen}
    assert len(idents) == 1
    assert idents != {threading.get_ident()}
    (name,) = names
    assert name.startswith("klein-gpu")


async def test_lane_runs_one_thing_at_a_time(lane: GpuThread) -> None:
    active = 0
    most = 0
    guard = threading.Lock()

    def work() -> None:
        nonlocal active, most
        with guard:
            active += 1
            most = max(most, active)
        time.sleep(0.01)
        with guard:
            active -= 1

    await asyncio.gather(*(lane.run(work) for _ in range(6)))
    assert most == 1


async def test_lane_does_not_block_the_event_loop(lane: GpuThread) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    await lane.run(time.sleep, 0.1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert ticks >= 5


async def test_lane_counts_busy_time(lane: GpuThread) -> None:
    assert lane.busy_seconds == 0.0
    await lane.run(time.sleep, 0.05)
    await lane.run(time.sleep, 0.05)
    assert 0.1 <= lane.busy_seconds < 1.0
    assert 0.0 < lane.duty_cycle <= 1.0


async def test_lane_counts_busy_time_of_failed_work(lane: GpuThread) -> None:
    def boom() -> None:
        time.sleep(0.03)
        raise RuntimeError("CUDA error")

    with pytest.raises(RuntimeError, match="CUDA error"):
        await lane.run(boom)
    assert lane.busy_seconds >= 0.03
    assert lane.running is False
    assert await lane.run(lambda: "still usable") == "still usable"


async def test_lane_reports_running_while_busy(lane: GpuThread) -> None:
    assert lane.running is False
    assert await lane.run(lambda: lane.running) is True
    assert lane.running is False


async def test_reset_clock_zeroes_the_busy_time(lane: GpuThread) -> None:
    await lane.run(time.sleep, 0.02)
    lane.reset_clock()
    assert lane.busy_seconds == 0.0
    assert lane.duty_cycle == 0.0


async def test_shutdown_stops_the_lane() -> None:
    gpu = GpuThread()
    await gpu.run(lambda: None)
    gpu.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        await gpu.run(lambda: None)


# --- lanes: which queued job runs next ----------------------------------------------------------------


async def hold(lane: GpuThread) -> tuple[asyncio.Task[None], threading.Event]:
    """Occupy the GPU thread until the returned event is set, so other jobs queue up behind."""
    release = threading.Event()
    entered = threading.Event()

    def blocker() -> None:
        entered.set()
        release.wait(5)

    task = asyncio.create_task(lane.submit(blocker, lane=0))
    while not entered.is_set():
        await asyncio.sleep(0.001)
    return task, release


async def queue_jobs(
    lane: GpuThread, jobs: list[tuple[int, str]], order: list[str]
) -> list[asyncio.Task[None]]:
    tasks = []
    for lane_no, name in jobs:
        tasks.append(asyncio.create_task(lane.submit(lambda name=name: order.append(name), lane=lane_no)))
        while lane.waiting() < len(tasks):  # fix the arrival order
            await asyncio.sleep(0.001)
    return tasks


async def test_the_most_urgent_lane_goes_first_and_fifo_within_a_lane(lane: GpuThread) -> None:
    order: list[str] = []
    blocker, release = await hold(lane)
    jobs = [(2, "c1"), (1, "b1"), (2, "c2"), (0, "a1"), (1, "b2"), (0, "a2"), (2, "c3")]
    tasks = await queue_jobs(lane, jobs, order)
    assert lane.waiting() == 7
    assert lane.waiting(2) == 3
    release.set()
    await asyncio.wait_for(asyncio.gather(blocker, *tasks), timeout=2)
    assert order == ["a1", "a2", "b1", "b2", "c1", "c2", "c3"]


async def test_lower_lanes_get_their_share_of_turns() -> None:
    gpu = GpuThread(low_lane_share=0.25)
    try:
        order: list[str] = []
        blocker, release = await hold(gpu)
        jobs = [(1, f"low{i}") for i in range(3)] + [(0, f"urgent{i}") for i in range(9)]
        tasks = await queue_jobs(gpu, jobs, order)
        release.set()
        await asyncio.wait_for(asyncio.gather(blocker, *tasks), timeout=2)
        # Every 4th turn while the low lane waits goes to it: 3 urgent, 1 low, ...
        assert order[:8] == ["urgent0", "urgent1", "urgent2", "low0", "urgent3", "urgent4", "urgent5", "low1"]
        assert order.index("urgent8") < order.index("low2")
    finally:
        gpu.shutdown(wait=True)


async def test_a_cancelled_job_that_has_not_started_never_runs(lane: GpuThread) -> None:
    order: list[str] = []
    blocker, release = await hold(lane)
    doomed, later = await queue_jobs(lane, [(0, "doomed"), (1, "later")], order)
    doomed.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await doomed
    assert lane.waiting() == 1
    release.set()
    await asyncio.wait_for(asyncio.gather(blocker, later), timeout=2)
    assert order == ["later"]


async def test_on_start_runs_on_the_event_loop_when_the_job_starts(lane: GpuThread) -> None:
    seen: list[str] = []
    loop_thread = threading.get_ident()

    def started() -> None:
        seen.append("start-on-loop" if threading.get_ident() == loop_thread else "start-elsewhere")

    await lane.submit(lambda: seen.append("job"), lane=0, on_start=started)
    await asyncio.sleep(0.01)
    assert sorted(seen) == ["job", "start-on-loop"]


async def test_shutdown_cancels_queued_jobs() -> None:
    gpu = GpuThread()
    blocker, release = await hold(gpu)
    queued = asyncio.create_task(gpu.submit(lambda: None, lane=0))
    while gpu.waiting() < 1:
        await asyncio.sleep(0.001)
    gpu.shutdown(wait=False)
    release.set()
    await blocker
    with pytest.raises(asyncio.CancelledError):
        await queued
