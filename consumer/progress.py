"""Throttled progress events for one request: at most one a second, plus one at each stage change.

Sending never waits for the broker (the producer batches it in the background), so progress cannot
slow an edit; a lost progress event is harmless because the result event is authoritative.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from schemas.progress import EditProgressed, EditStage


class ProgressReporter:
    def __init__(
        self,
        *,
        request_id: str,
        worker: str,
        interval_s: float,
        emit: Callable[[EditProgressed], None],
        picked_up: float,
    ) -> None:
        self._request_id = request_id
        self._worker = worker
        self._interval_s = interval_s
        self._emit = emit
        self._picked_up = picked_up  # time.monotonic() at pickup
        self._stage: EditStage | None = None
        self._last_sent = 0.0
        self._edit_started: float | None = None
        self._total_steps = 0
        self.closed = False

    def stage(self, stage: EditStage, *, total_steps: int = 0) -> None:
        if self.closed or stage is self._stage:
            return
        self._stage = stage
        if stage is EditStage.EDITING:
            self._edit_started = time.monotonic()
            self._total_steps = total_steps
        self._send(step=self._total_steps if stage is EditStage.UPLOADING else 0, eta_ms=None)

    def step(self, done: int, total: int) -> None:
        """Called after each denoising step; sends at most once per interval."""
        if self.closed or time.monotonic() - self._last_sent < self._interval_s:
            return
        eta_ms = None
        if self._edit_started is not None and done > 0:
            per_step = (time.monotonic() - self._edit_started) / done
            eta_ms = round(per_step * (total - done) * 1000.0, 1)
        self._send(step=done, eta_ms=eta_ms)

    def close(self) -> None:
        """No events after the result."""
        self.closed = True

    def _send(self, *, step: int, eta_ms: float | None) -> None:
        assert self._stage is not None
        now = time.monotonic()
        self._last_sent = now
        self._emit(
            EditProgressed(
                request_id=self._request_id,
                stage=self._stage,
                step=step,
                total_steps=self._total_steps,
                elapsed_ms=round((now - self._picked_up) * 1000.0, 1),
                eta_ms=eta_ms,
                worker=self._worker,
                at=datetime.now(UTC),
            )
        )
