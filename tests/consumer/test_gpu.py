"""GpuLane (one dedicated thread, busy-time accounting) and GpuGate (lane priority, FIFO, cancellation)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator

import pytest

from consumer.gpu import GpuGate, GpuLane


@pytest.fixture
def lane() -> Iterator[GpuLane]:
    gpu = GpuLane()
    yield gpu
    gpu.shutdown(wait=True)


# --- GpuLane ---------------------------------------------------------------------------------------


async def test_lane_returns_the_result_and_passes_arguments(lane: GpuLane) -> None:
    def add(a: int, b: int, *, scale: int = 1) -> int:
        return (a + b) * scale

    assert await lane.run(add, 2, 3, scale=10) == 50


async def test_lane_runs_everything_on_one_dedicated_thread(lane: GpuLane) -> None:
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


async def test_lane_runs_one_thing_at_a_time(lane: GpuLane) -> None:
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


async def test_lane_does_not_block_the_event_loop(lane: GpuLane) -> None:
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


async def test_lane_counts_busy_time(lane: GpuLane) -> None:
    assert lane.busy_seconds == 0.0
    await lane.run(time.sleep, 0.05)
    await lane.run(time.sleep, 0.05)
    assert 0.1 <= lane.busy_seconds < 1.0
    assert 0.0 < lane.duty_cycle <= 1.0


async def test_lane_counts_busy_time_of_failed_work(lane: GpuLane) -> None:
    def boom() -> None:
        time.sleep(0.03)
        raise RuntimeError("CUDA error")

    with pytest.raises(RuntimeError, match="CUDA error"):
        await lane.run(boom)
    assert lane.busy_seconds >= 0.03
    assert lane.running is False
    assert await lane.run(lambda: "still usable") == "still usable"


async def test_lane_reports_running_while_busy(lane: GpuLane) -> None:
    assert lane.running is False
    assert await lane.run(lambda: lane.running) is True
    assert lane.running is False


async def test_reset_clock_zeroes_the_busy_time(lane: GpuLane) -> None:
    await lane.run(time.sleep, 0.02)
    lane.reset_clock()
    assert lane.busy_seconds == 0.0
    assert lane.duty_cycle == 0.0


async def test_shutdown_stops_the_lane() -> None:
    gpu = GpuLane()
    await gpu.run(lambda: None)
    gpu.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        await gpu.run(lambda: None)


# --- GpuGate ---------------------------------------------------------------------------------------


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def take_turn(gate: GpuGate, lane: int, name: str, order: list[str]) -> None:
    await gate.acquire(lane)
    order.append(name)
    gate.release()


async def test_gate_is_free_at_first() -> None:
    gate = GpuGate()
    await asyncio.wait_for(gate.acquire(3), timeout=1)
    assert gate.waiting == 0
    gate.release()
    await asyncio.wait_for(gate.acquire(0), timeout=1)
    gate.release()


async def test_gate_holds_others_until_released() -> None:
    gate = GpuGate()
    await gate.acquire(0)
    waiter = asyncio.create_task(gate.acquire(0))
    await settle()
    assert not waiter.done()
    assert gate.waiting == 1
    gate.release()
    await asyncio.wait_for(waiter, timeout=1)
    assert gate.waiting == 0
    gate.release()


async def test_gate_serves_the_lowest_lane_first_and_fifo_within_a_lane() -> None:
    gate = GpuGate()
    order: list[str] = []
    await gate.acquire(0)  # hold the gate while the others queue up
    tasks = []
    for lane, name in [(2, "c1"), (1, "b1"), (2, "c2"), (0, "a1"), (1, "b2"), (0, "a2"), (2, "c3")]:
        tasks.append(asyncio.create_task(take_turn(gate, lane, name, order)))
        await settle()  # fix the arrival order
    assert gate.waiting == 7
    gate.release()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=2)
    assert order == ["a1", "a2", "b1", "b2", "c1", "c2", "c3"]
    assert gate.waiting == 0


async def test_a_more_urgent_arrival_overtakes_queued_lower_lanes() -> None:
    gate = GpuGate()
    order: list[str] = []
    await gate.acquire(0)
    low = asyncio.create_task(take_turn(gate, 1, "low", order))
    await settle()
    high = asyncio.create_task(take_turn(gate, 0, "high", order))
    await settle()
    gate.release()
    await asyncio.wait_for(asyncio.gather(low, high), timeout=2)
    assert order == ["high", "low"]


async def test_gate_survives_a_cancelled_waiter() -> None:
    gate = GpuGate()
    order: list[str] = []
    await gate.acquire(0)
    doomed = asyncio.create_task(take_turn(gate, 0, "doomed", order))
    later = asyncio.create_task(take_turn(gate, 1, "later", order))
    await settle()
    doomed.cancel()
    await settle()
    assert doomed.cancelled()
    assert gate.waiting == 1
    gate.release()
    await asyncio.wait_for(later, timeout=1)
    assert order == ["later"]
    # and the gate is free again afterwards
    await asyncio.wait_for(gate.acquire(0), timeout=1)
    gate.release()


async def test_a_waiter_cancelled_as_it_gets_the_turn_passes_it_on() -> None:
    gate = GpuGate()
    order: list[str] = []
    await gate.acquire(0)
    first = asyncio.create_task(take_turn(gate, 0, "first", order))
    second = asyncio.create_task(take_turn(gate, 0, "second", order))
    await settle()
    gate.release()  # hands the turn to `first` ...
    first.cancel()  # ... which is cancelled before it could run
    await asyncio.wait_for(second, timeout=1)
    assert first.cancelled()
    assert order == ["second"]
    await asyncio.wait_for(gate.acquire(0), timeout=1)
    gate.release()


async def test_all_waiters_cancelled_leaves_the_gate_free() -> None:
    gate = GpuGate()
    await gate.acquire(0)
    waiters = [asyncio.create_task(gate.acquire(lane)) for lane in (0, 1, 2)]
    await settle()
    for waiter in waiters:
        waiter.cancel()
    await settle()
    assert gate.waiting == 0
    gate.release()
    await asyncio.wait_for(gate.acquire(5), timeout=1)
    gate.release()


async def test_many_contenders_each_get_exactly_one_turn() -> None:
    gate = GpuGate()
    holders = 0
    most = 0
    turns: list[int] = []

    async def contend(i: int) -> None:
        nonlocal holders, most
        await gate.acquire(i % 3)
        holders += 1
        most = max(most, holders)
        await asyncio.sleep(0)
        holders -= 1
        turns.append(i)
        gate.release()

    await asyncio.wait_for(asyncio.gather(*(contend(i) for i in range(30))), timeout=5)
    assert most == 1
    assert sorted(turns) == list(range(30))
