"""The single boundary that all GPU work crosses: one dedicated thread.

CUDA work from several threads would contend for one device and make OOMs unpredictable, and work on
the event loop would stop Kafka heartbeats. So model loading, warm-up and every edit run here, one at a
time, and the lane measures how busy that thread is (the duty cycle the throughput goal is about).
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class GpuLane:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="klein-gpu")
        self._lock = threading.Lock()
        self._busy_s = 0.0
        self._started = time.perf_counter()
        self.running = False

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(self._timed, fn, *args, **kwargs))

    def _timed(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        self.running = True
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            with self._lock:
                self._busy_s += time.perf_counter() - start
            self.running = False

    @property
    def busy_seconds(self) -> float:
        with self._lock:
            return self._busy_s

    def reset_clock(self) -> None:
        with self._lock:
            self._busy_s = 0.0
            self._started = time.perf_counter()

    @property
    def duty_cycle(self) -> float:
        elapsed = time.perf_counter() - self._started
        return self.busy_seconds / elapsed if elapsed > 0 else 0.0

    def shutdown(self, *, wait: bool) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=True)


class GpuGate:
    """Decides which prepared edit gets the GPU next: the most urgent lane, then the earliest arrival.

    Edits are fetched ahead of time, so several may be ready at once. `low_lane_share` keeps lower
    lanes from starving: each turn given to the top lane while a lower lane waits earns that share of
    a turn, and a whole earned turn goes to the best waiter of the lower lanes. Handing over costs one
    event-loop iteration.
    """

    def __init__(self, *, low_lane_share: float = 0.0) -> None:
        self._busy = False
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = 0
        self._share = low_lane_share
        self._credit = 0.0

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, fut in self._waiters if not fut.done())

    def waiting_in(self, lane: int) -> int:
        return sum(1 for waiter_lane, _, fut in self._waiters if waiter_lane == lane and not fut.done())

    async def acquire(self, lane: int) -> None:
        if not self._busy and not self._waiters:
            self._busy = True
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._arrivals += 1
        self._waiters.append((lane, self._arrivals, fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the turn was handed to us as we were cancelled: pass it on
            raise

    def release(self) -> None:
        self._waiters = [w for w in self._waiters if not w[2].done()]
        if not self._waiters:
            self._busy = False
            return
        ordered = sorted(self._waiters, key=lambda w: (w[0], w[1]))
        chosen = ordered[0]
        lower = [w for w in ordered if w[0] > chosen[0]]
        if lower and self._share > 0:
            self._credit += self._share
            if self._credit >= 1.0:
                self._credit -= 1.0
                chosen = lower[0]
        self._waiters.remove(chosen)
        chosen[2].set_result(None)
