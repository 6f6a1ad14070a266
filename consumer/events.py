"""What a request's stages tell the outside while they run: typed events and the observer that takes them.

The stages (`consumer.stages`) never call back into the handler that runs them; they report progress
as events to an `EditObserver`, as cog's worker reports through `eventtypes`. The handler's observer
turns them into progress events, cancel checks and the durable GPU-run count. Each event says on
which thread it is delivered: an observer may raise `EditCanceled` (or another `KleinEditError`) from
any of them to stop the request there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from schemas.progress import EditStage


@dataclass(frozen=True)
class StageStarted:
    """A stage began (event loop). `total_steps` is set for `EditStage.EDITING`."""

    stage: EditStage
    total_steps: int = 0


@dataclass(frozen=True)
class GpuRunStarting:
    """The GPU thread took the request and is about to edit (GPU thread, before any GPU work)."""

    total_steps: int


@dataclass(frozen=True)
class GpuStarted:
    """The same moment as `GpuRunStarting`, seen from the event loop (delivered shortly after it)."""

    total_steps: int


@dataclass(frozen=True)
class StepFinished:
    """A denoising step ended (GPU thread); `done` of `total`, `done == 0` before the first step."""

    done: int
    total: int


EditEvent = StageStarted | GpuRunStarting | GpuStarted | StepFinished


class EditObserver(Protocol):
    """Takes a request's events. `before_gpu` runs on the event loop once the inputs are ready and
    before the request queues for the GPU: the last place to refuse it without spending GPU time."""

    async def before_gpu(self) -> None: ...
    def on_event(self, event: EditEvent) -> None: ...


class NullObserver:
    """Observes nothing: for running the stages outside a worker (benchmarks, tests of one stage)."""

    async def before_gpu(self) -> None:
        return None

    def on_event(self, event: EditEvent) -> None:
        return None
