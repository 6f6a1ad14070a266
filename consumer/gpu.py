"""The single boundary that all GPU work crosses: one dedicated thread with a priority queue.

CUDA work from several threads would contend for one device and make OOMs unpredictable, and work on
the event loop would stop Kafka heartbeats. So model loading, warm-up and every edit run on this one
thread. The thread picks its next job itself, the moment the previous one ends: handing over through
the event loop would cost a few GIL hand-offs per edit while I/O threads decode and encode images,
which is exactly the idle time the duty-cycle goal is about.

Jobs carry a lane (0 = most urgent). The next job is the earliest job of the lane whose turn it is
under `LaneShare`: the most urgent lane with work, except for the share of turns that goes to the lanes
below it, so they are never starved.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from consumer.lanes import LaneShare

P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class _Job:
    lane: int
    arrival: int
    fn: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    on_start: Callable[[], None] | None = None
    started: bool = field(default=False)


class GpuThread:
    def __init__(self, *, low_lane_share: float = 0.0) -> None:
        self._lanes = LaneShare(low_lane_share)
        self._queue: list[_Job] = []
        self._cond = threading.Condition()
        self._arrivals = itertools.count()
        self._closed = False
        self._busy_s = 0.0
        self._started = time.perf_counter()
        self.running = False
        self._job_started: float | None = None
        # A daemon thread: an edit abandoned at shutdown must not keep the process alive.
        self._thread = threading.Thread(target=self._serve, name="klein-gpu", daemon=True)
        self._thread.start()

    async def run(
        self,
        fn: Callable[P, T],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run `fn` on the GPU thread in lane 0 (model loading, warm-up)."""
        return await self.submit(functools.partial(fn, *args, **kwargs), lane=0)

    async def submit(
        self, fn: Callable[[], T], *, lane: int, on_start: Callable[[], None] | None = None
    ) -> T:
        """Queue `fn` in `lane`; `on_start` runs on the event loop when the GPU thread starts it.

        Cancelling the awaiting task removes a job that has not started; a started job runs to its
        end (stop it through its own step callback).
        """
        loop = asyncio.get_running_loop()
        job = _Job(lane, next(self._arrivals), fn, loop, loop.create_future(), on_start)
        with self._cond:
            if self._closed:
                raise RuntimeError("the GPU lane is shut down")
            self._queue.append(job)
            self._cond.notify()
        try:
            result: T = await job.future
            return result
        except asyncio.CancelledError:
            with self._cond:
                if not job.started and job in self._queue:
                    self._queue.remove(job)
            raise

    def waiting(self, lane: int | None = None) -> int:
        with self._cond:
            return sum(1 for job in self._queue if lane is None or job.lane == lane)

    def _next_job(self) -> _Job:
        lane = self._lanes.take_turn(job.lane for job in self._queue)
        chosen = min((job for job in self._queue if job.lane == lane), key=lambda job: job.arrival)
        self._queue.remove(chosen)
        chosen.started = True
        return chosen

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed and not self._queue:
                    return
                job = self._next_job()
            if job.on_start is not None:
                _call_soon(job.loop, job.on_start)
            self.running = True
            start = time.perf_counter()
            self._job_started = start
            result: Any = None
            error: BaseException | None = None
            try:
                result = job.fn()
            except BaseException as exc:  # delivered to the awaiting task, which decides what it means
                error = exc
            # The lane is idle again before the awaiting task hears of the result.
            elapsed = time.perf_counter() - start
            with self._cond:
                self._busy_s += elapsed
            self.running = False
            self._job_started = None
            _call_soon(job.loop, _settle, job.future, result, error)
            del result, error  # the next job may be long: don't hold on to this one's tensors

    def current_job_seconds(self) -> float:
        """How long the job now on the GPU thread has been running (0 when idle)."""
        started = self._job_started
        return 0.0 if started is None else time.perf_counter() - started

    @property
    def busy_seconds(self) -> float:
        with self._cond:
            return self._busy_s

    def reset_clock(self) -> None:
        with self._cond:
            self._busy_s = 0.0
            self._started = time.perf_counter()

    @property
    def duty_cycle(self) -> float:
        elapsed = time.perf_counter() - self._started
        return self.busy_seconds / elapsed if elapsed > 0 else 0.0

    def shutdown(self, *, wait: bool) -> None:
        """Refuse new jobs and drop queued ones; with `wait`, wait for the running job to end."""
        with self._cond:
            self._closed = True
            dropped, self._queue = self._queue, []
            self._cond.notify_all()
        for job in dropped:
            _call_soon(job.loop, job.future.cancel)
        if wait:
            self._thread.join()


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
        loop.call_soon_threadsafe(fn, *args)
