"""The handling of one record: attempts until its fate is settled, then the result (and DLQ copy).

`RecordHandler.handle` decodes the record, runs the stages (prepare -> GPU -> store) through the
`EditProcessor`, retries what `fate.decide` says to retry, dead-letters and fails what it says to,
publishes the result and reports whether the record may be committed. Cancels, progress events and
the durable attempt counts (the ledger) are checked and written here, around the stages.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Protocol

import structlog
from aiokafka import ConsumerRecord, TopicPartition

from consumer.backoff import jittered
from consumer.control import CancelRegistry
from consumer.http.metrics import WorkerMetrics
from consumer.kafka.codec import decode_record
from consumer.kafka.tracing import Headers, trace_headers
from consumer.policy import Action, InternalError, PoisonMessage, decide
from consumer.progress import ProgressReporter
from consumer.publisher import Publisher, PublishRejected
from consumer.settings import Settings
from consumer.stages import EditContext, EditProcessor, PreparedEdit
from pipeline import EditCanceled, Editor
from schemas.errors import ErrorCode, KleinEditError
from schemas.progress import EditStage
from schemas.requests import EditRequest
from schemas.results import EditCompleted
from storage import LedgerEntry

log = structlog.get_logger("klein_edit.worker")


class Ledger(Protocol):
    """Durable attempt counts per record (`storage.AttemptLedger` is the real one)."""

    def record_pickup(self, topic: str, partition: int, offset: int) -> LedgerEntry: ...
    def record_gpu_run(self, topic: str, partition: int, offset: int) -> LedgerEntry: ...
    def clear(self, topic: str, partition: int, offset: int) -> None: ...


class RecordHandler:
    def __init__(
        self,
        settings: Settings,
        *,
        processor: EditProcessor,
        publisher: Publisher,
        ledger: Ledger,
        cancels: CancelRegistry,
        metrics: WorkerMetrics,
        io: Executor,
        abandon: asyncio.Event,
    ) -> None:
        self._settings = settings
        self._processor = processor
        self._publisher = publisher
        self._ledger = ledger
        self._cancels = cancels
        self._metrics = metrics
        self._io = io
        self._abandon = abandon
        self.fatal: KleinEditError | None = None  # set when an error says the process is unusable

    async def handle(self, record: ConsumerRecord[bytes, bytes], request_id: str, lane: int) -> bool:
        """Settle one record and publish its result; True when it may be committed past.

        False means the record stays uncommitted: the worker is crashing (`fatal` is set) or
        abandoning it at shutdown. A result Kafka refuses for good (`PublishRejected`) is logged and
        counted, and the record is committed. Never raises but `asyncio.CancelledError`.
        """
        tp = TopicPartition(record.topic, record.partition)
        structlog.contextvars.bind_contextvars(
            request_id=request_id, topic=tp.topic, partition=tp.partition, offset=record.offset
        )
        if record.value is None:
            # A tombstone (null value): compaction or a producer deleting a key, not a request. A
            # result would be wrong (a compacted result topic would say "failed" for a request that
            # succeeded): skipped, counted and committed past, as the control reader does.
            self._metrics.tombstones.inc()
            log.info("record.tombstone_skipped")
            return True
        ctx = EditContext(request_id=request_id, picked_up=time.time(), record_timestamp_ms=record.timestamp)
        try:
            result = await self._attempt_until_settled(tp, record, ctx, lane)
            if result is None:
                return False
            try:
                await self._publisher.publish_result(result, headers=trace_headers(record.headers))
            except PublishRejected as exc:
                # Refused for good (e.g. over the topic's size limit): retrying cannot help, and holding
                # the record back would stall its partition forever. Logged and counted, then committed.
                log.error("result.lost", error=exc.message, status=result.status.value)
            _log_summary(result)
            observe_gpu_memory(self._metrics, self._processor.editor)
            asyncio.get_running_loop().run_in_executor(self._io, self._clear_ledger, tp, record.offset)
            return True
        except asyncio.CancelledError:
            raise
        except Exception:
            # Publishing only fails here when the worker is abandoning; the record stays uncommitted.
            log.exception("edit.unfinished")
            return False

    async def _attempt_until_settled(
        self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes], ctx: EditContext, lane: int
    ) -> EditCompleted | None:
        """Run the record until it succeeds or `decide` settles its fate; None means: do not commit."""
        tries = 0
        while True:
            tries += 1
            ctx.attempt = tries
            try:
                request = decode_record(
                    record.value,
                    record.headers,
                    max_bytes=self._settings.kafka.max_request_bytes,
                    strict=self._settings.worker.reject_unknown_fields,
                )
                return await self._run_stages(ctx, request, lane, tp=tp, record=record)
            except KleinEditError as exc:
                error = exc
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("edit.unexpected_error")
                error = InternalError(f"{type(exc).__name__}: {exc}")
            worker = self._settings.worker
            verdict = decide(
                error,
                attempt=ctx.attempt,
                max_attempts=worker.max_attempts,
                backoff_s=worker.retry_backoff_s,
                backoff_max_s=worker.retry_backoff_max_s,
            )
            if verdict.action is Action.RETRY:
                self._metrics.retries.labels(code=error.code.value).inc()
                delay = jittered(verdict.backoff_s)  # workers that failed together retry apart
                log.warning(
                    "edit.retrying",
                    code=error.code.value,
                    error=error.message,
                    attempt=ctx.attempt,
                    backoff_s=round(delay, 3),
                )
                await asyncio.sleep(delay)
                continue
            if verdict.action is Action.CRASH:
                self.fatal = error
                return None
            if verdict.action is Action.DEAD_LETTER:
                await self._publisher.dead_letter(record, error, ctx.attempt)
            return self._processor.unsuccessful(ctx, error)

    async def _run_stages(
        self,
        ctx: EditContext,
        request: EditRequest,
        lane: int,
        *,
        tp: TopicPartition,
        record: ConsumerRecord[bytes, bytes],
    ) -> EditCompleted:
        offset = record.offset
        reporter = self._reporter_for(ctx, request, trace=trace_headers(record.headers))
        try:
            self._raise_if_canceled(ctx.request_id, "before pickup")
            if reporter:
                reporter.stage(EditStage.FETCHING)
            prepared = await self._processor.prepare(ctx, request)
            if not isinstance(prepared, PreparedEdit):
                return prepared  # answered from the stored output: no GPU work
            count_before, count_on_start = await self._gpu_run_counter(ctx, tp, offset)
            total_steps = prepared.params.num_inference_steps

            def started() -> None:  # on the event loop, as the GPU thread takes the job
                if count_on_start:
                    count_on_start()
                if reporter:
                    reporter.stage(EditStage.EDITING, total_steps=total_steps)

            finished = await self._processor.edit(
                ctx,
                prepared,
                lane=lane,
                before=count_before,
                on_start=started,
                on_step=self._step_hook(ctx.request_id, reporter),
            )
            self._raise_if_canceled(ctx.request_id, "after the last step, before upload")
            if reporter:
                reporter.stage(EditStage.UPLOADING)
            return await self._processor.store(ctx, prepared, finished)
        finally:
            if reporter:
                reporter.close()

    def _raise_if_canceled(self, request_id: str, when: str) -> None:
        if request_id in self._cancels:
            raise EditCanceled(f"canceled by a control command {when}")

    def _reporter_for(
        self, ctx: EditContext, request: EditRequest, *, trace: Headers
    ) -> ProgressReporter | None:
        worker = self._settings.worker
        wanted = request.progress if request.progress is not None else worker.progress
        if not wanted:
            return None
        return ProgressReporter(
            request_id=ctx.request_id,
            worker=worker.name,
            interval_s=worker.progress_interval_s,
            emit=functools.partial(self._publisher.emit_progress, headers=trace or None),
            picked_up=time.monotonic() - (time.time() - ctx.picked_up),
        )

    def _step_hook(self, request_id: str, reporter: ProgressReporter | None) -> Callable[[int, int], None]:
        abandon, cancels = self._abandon, self._cancels
        loop = asyncio.get_running_loop()

        def on_step(done: int, total: int) -> None:  # runs on the GPU thread, between denoising steps
            if abandon.is_set():
                raise EditCanceled("worker is shutting down past its grace period")
            if request_id in cancels:
                raise EditCanceled(f"canceled by a control command after step {done}/{total}")
            if reporter is not None:
                loop.call_soon_threadsafe(reporter.step, done, total)

        return on_step

    async def _gpu_run_counter(
        self, ctx: EditContext, tp: TopicPartition, offset: int
    ) -> tuple[Callable[[], None] | None, Callable[[], None] | None]:
        """Check the durable counts before the GPU; return how to count this record's GPU run.

        Returns `(before, on_start)`: `before` runs on the GPU thread ahead of the edit, `on_start` on
        the event loop as the GPU takes the record. Only runs that really start are counted, so a
        crash is blamed on the one record on the GPU, never on the records fetched or queued behind
        it. A first delivery is counted off the GPU thread as it starts (the GPU never waits for S3;
        a crash within the first milliseconds of its edit may go uncounted once). A redelivery, the
        suspicious case, is counted on the GPU thread before its edit, so that count is durable
        before any risk.
        """
        loop = asyncio.get_running_loop()
        try:
            entry = await loop.run_in_executor(
                self._io, self._ledger.record_pickup, tp.topic, tp.partition, offset
            )
        except KleinEditError as exc:
            log.warning("ledger.unavailable", error=exc.message)
            entry = LedgerEntry(pickups=ctx.attempt, gpu_runs=0)
        ctx.attempt = max(ctx.attempt, entry.gpu_runs + 1)
        if entry.gpu_runs >= self._settings.worker.max_attempts:
            raise PoisonMessage(
                f"its edit started {entry.gpu_runs} times without finishing (it crashed or hung the worker)"
            )

        def count_run() -> None:
            try:
                self._ledger.record_gpu_run(tp.topic, tp.partition, offset)
            except KleinEditError as exc:
                log.warning("ledger.unavailable", error=exc.message)

        if entry.pickups > 1 or ctx.attempt > 1:
            return count_run, None

        def count_in_background() -> None:
            loop.run_in_executor(self._io, count_run)

        return None, count_in_background

    def _clear_ledger(self, tp: TopicPartition, offset: int) -> None:
        """On an I/O thread. A failed clear loses nothing (the record is finished) but leaves the
        object behind: counted in `klein_edit_ledger_clear_failures_total` so a missing
        s3:DeleteObject is seen; the bucket's lifecycle rule on the ledger prefix removes it later."""
        try:
            self._ledger.clear(tp.topic, tp.partition, offset)
        except KleinEditError as exc:
            self._metrics.ledger_clear_failures.inc()
            log.warning("ledger.clear_failed", code=exc.code.value, error=exc.message)


def observe_gpu_memory(metrics: WorkerMetrics, editor: Editor) -> None:
    metrics.observe_gpu_memory(editor.memory_stats())
    metrics.observe_recompiles(editor.recompiles_after_ready)


def _log_summary(result: EditCompleted) -> None:
    """The one line per edit that operators grep for."""
    fields: dict[str, Any] = {
        "status": result.status.value,
        "attempt": result.attempt,
        "timing_ms": result.timing_ms.model_dump(),
        "usd": result.cost.usd,
    }
    if result.output is not None:
        fields.update(output=result.output.uri, width=result.output.width, height=result.output.height)
    if result.error is not None:
        fields.update(code=result.error.code.value, error=result.error.message)
    if result.error is not None and result.error.code is not ErrorCode.CANCELED:
        log.warning("edit.completed", **fields)
    else:
        log.info("edit.completed", **fields)
