"""What the health endpoints report about one worker: loaded, in the group, draining, stalled."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from consumer.gpu import GpuThread


class WorkerState:
    """What the health endpoints report.

    `problems` names what keeps the worker from doing its whole job although it runs (e.g.
    `{"control": "control reader stalled 12 s: ..."}`); any problem makes /readyz answer 503 with it.
    """

    def __init__(self) -> None:
        self.model_ready = False
        self.in_group = False
        self.draining = False
        self.consume_task: asyncio.Task[Any] | None = None
        self.last_loop_at = time.monotonic()
        self.gpu: GpuThread | None = None
        self.edit_timeout_s: float | None = None
        self.problems: dict[str, str] = {}

    @property
    def ready(self) -> bool:
        return self.model_ready and self.in_group and not self.draining and not self.problems

    @property
    def not_ready_reason(self) -> str:
        """Why /readyz answers 503 (empty when ready); named problems first, they say what to fix,
        then "model loading" while it lasts (the model loads while the problems are waited out)."""
        if self.problems:
            named = "; ".join(f"{name}: {problem}" for name, problem in sorted(self.problems.items()))
            return named if self.model_ready else f"{named}; model loading"
        if not self.model_ready:
            return "model loading"
        if self.draining:
            return "draining"
        if not self.in_group:
            return "not in the consumer group (joining, or a rebalance is under way)"
        return ""

    @property
    def alive(self) -> bool:
        if self.consume_task is not None and self.consume_task.done():
            return False
        if not self.model_ready:
            return True  # loading runs on the GPU thread; the startup probe bounds how long it may take
        if (
            self.gpu is not None
            and self.edit_timeout_s
            and self.gpu.current_job_seconds() > self.edit_timeout_s
        ):
            return False  # a hung kernel: let the orchestrator restart us (the ledger counts the run)
        return time.monotonic() - self.last_loop_at < 60.0
