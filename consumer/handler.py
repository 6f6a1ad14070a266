"""The handling of one record: attempts until its fate is settled, then the result (and DLQ copy).

`RecordHandler.handle` decodes the record and runs `EditStages.run` once per attempt; what each error
does (retry, fail, dead-letter, crash) is `consumer.policy`'s decision. Then it publishes the result and
says whether the record may be committed. Cancels, progress events and the durable attempt counts (the
ledger) live here, in the `RecordObserver` that takes the stages' events.
"""

from __future__ import annotations

import asyncio
import functools
import time
from concurrent.futures import Executor
from typing import Any, Protocol

import structlog
from aiokafka import ConsumerRecord, TopicPartition

from consumer.backoff import jittered
from consumer.context import EditContext
from consumer.control import CancelRegistry
from consumer.events import EditEvent, GpuRunStarting, GpuStarted, StageStarted, StepFinished
from consumer.gpu import GpuThread
from consumer.http.metrics import WorkerMetrics
from consumer.kafka.codec import decode_record
from consumer.kafka.tracing import Headers, trace_headers
from consumer.moderation import Moderation
from consumer.outcomes import Outcomes
from consumer.policy import Action, InternalError, PoisonMessage, decide
from consumer.progress import ProgressReporter
from consumer.provenance import OutputSigner
from consumer.publisher import Producer, Publisher, PublishRejected
from consumer.settings import Settings
from consumer.stages import EditStages, Store
from consumer.url_fetch import UrlSource
from pipeline import EditCanceled, Editor
from schemas.errors import ErrorCode, KleinEditError
from schemas.progress import EditStage
from schemas.requests import EditRequest
from schemas.results import EditCompleted
from storage import LedgerEntry

log = structlog.get_logger("klein_edit.worker")


class Ledger(Protocol):
    """Durable attempt counts per record (`storage.AttemptLedger` is the real one, `consumer.fakes.FakeLedger`
    the in-memory one)."""

    def record_pickup(self, topic: str, partition: int, offset: int) -> LedgerEntry: ...
    def record_gpu_run(self, topic: str, partition: int, offset: int) -> LedgerEntry: ...
    def clear(self, topic: str, partition: int, offset: int) -> None: ...


def build_record_handler(
    settings: Settings,
    *,
    editor: Editor,
    store: Store,
    ledger: Ledger,
    producer: Producer,
    gpu: GpuThread,
    io: Executor,
    metrics: WorkerMetrics,
    cancels: CancelRegistry,
    abandon: asyncio.Event,
    signer: OutputSigner | None = None,
    moderation: Moderation | None = None,
    urls: UrlSource | None = None,
) -> RecordHandler:
    """The one place that builds a record's path: results, stages, publisher and handler. The worker
    calls it with the real store, ledger and producer, the record-path tests with `consumer.fakes`."""
    outcomes = Outcomes(
        model=editor.model_name,
        worker=settings.worker.name,
        usd_per_megapixel=settings.cost.usd_per_megapixel,
        bill_moderated_outputs=settings.cost.bill_moderated_outputs,
    )
    stages = EditStages(
        settings,
        store=store,
        editor=editor,
        gpu=gpu,
        io=io,
        outcomes=outcomes,
        metrics=metrics,
        signer=signer,
        moderation=moderation,
        urls=urls,
    )
    return RecordHandler(
        settings,
        stages=stages,
        outcomes=outcomes,
        publisher=Publisher(producer, settings.kafka, metrics, abandon=abandon),
        ledger=ledger,
        cancels=cancels,
        metrics=metrics,
        io=io,
        abandon=abandon,
    )


class ProcessUnusable(Exception):
    """Raised by `RecordHandler.handle` when an error says the process cannot go on (a CUDA fault): the
    record stays uncommitted and the worker must exit non-zero. `error` is the typed error."""

    def __init__(self, error: KleinEditError) -> None:
        super().__init__(error.message)
        self.error = error


# What a cancel check says at each stage start (the event loop's checks; the GPU thread checks per step).
_CANCEL_POINTS = {
    EditStage.FETCHING: "before pickup",
    EditStage.UPLOADING: "after the last step, before upload",
}


class RecordHandler:
    def __init__(
        self,
        settings: Settings,
        *,
        stages: EditStages,
        outcomes: Outcomes,
        publisher: Publisher,
        ledger: Ledger,
        cancels: CancelRegistry,
        metrics: WorkerMetrics,
        io: Executor,
        abandon: asyncio.Event,
    ) -> None:
        self._settings = settings
        self._stages = stages
        self._outcomes = outcomes
        self._publisher = publisher
        self._ledger = ledger
        self._cancels = cancels
        self._metrics = metrics
        self._io = io
        self._abandon = abandon

    async def handle(self, record: ConsumerRecord[bytes, bytes], request_id: str, lane: int) -> bool:
        """Settle one record and publish its result; True when it may be committed past.

        False means the record stays uncommitted: the worker is abandoning it at shutdown. A result Kafka
        refuses for good (`PublishRejected`) is logged and counted, and the record is committed. Raises
        `ProcessUnusable` when the process must exit (the record stays uncommitted), and
        `asyncio.CancelledError`; nothing else.
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
        ctx = EditContext(
            request_id=request_id, picked_up=time.time(), record_timestamp_ms=record.timestamp, lane=lane
        )
        try:
            result = await self._attempt_until_settled(tp, record, ctx)
            try:
                await self._publisher.publish_result(result, headers=trace_headers(record.headers))
            except PublishRejected as exc:
                # Refused for good (e.g. over the topic's size limit): retrying cannot help, and holding
                # the record back would stall its partition forever. Logged and counted, then committed.
                log.error("result.lost", error=exc.message, status=result.status.value)
            _log_summary(result)
            observe_gpu_memory(self._metrics, self._stages.editor)
            asyncio.get_running_loop().run_in_executor(self._io, self._clear_ledger, tp, record.offset)
            return True
        except (asyncio.CancelledError, ProcessUnusable):
            raise
        except Exception:
            # Publishing only fails here when the worker is abandoning; the record stays uncommitted.
            log.exception("edit.unfinished")
            return False

    async def _attempt_until_settled(
        self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes], ctx: EditContext
    ) -> EditCompleted:
        """Run the record until it succeeds or `decide` settles its fate."""
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
                observer = self._observer(ctx, request, tp, record)
                try:
                    return await self._stages.run(ctx, request, observer)
                finally:
                    observer.close()
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
                raise ProcessUnusable(error)
            if verdict.action is Action.DEAD_LETTER:
                await self._publisher.dead_letter(record, error, ctx.attempt)
            return self._outcomes.unsuccessful(ctx, error)

    def _observer(
        self, ctx: EditContext, request: EditRequest, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]
    ) -> RecordObserver:
        worker = self._settings.worker
        wanted = request.progress if request.progress is not None else worker.progress
        reporter = None
        if wanted:
            trace: Headers = trace_headers(record.headers)
            reporter = ProgressReporter(
                request_id=ctx.request_id,
                worker=worker.name,
                interval_s=worker.progress_interval_s,
                emit=functools.partial(self._publisher.emit_progress, headers=trace or None),
                picked_up=time.monotonic() - (time.time() - ctx.picked_up),
            )
        return RecordObserver(
            ctx,
            tp=tp,
            offset=record.offset,
            reporter=reporter,
            cancels=self._cancels,
            abandon=self._abandon,
            ledger=self._ledger,
            io=self._io,
            max_attempts=worker.max_attempts,
        )

    def memory_stats(self) -> dict[str, float]:
        """The editor's GPU memory figures (bytes; 0 on the CPU)."""
        return self._stages.editor.memory_stats()

    def _clear_ledger(self, tp: TopicPartition, offset: int) -> None:
        """On an I/O thread. A failed clear loses nothing (the record is finished) but leaves the
        object behind: counted in `klein_edit_ledger_clear_failures_total` so a missing
        s3:DeleteObject is seen; the bucket's lifecycle rule on the ledger prefix removes it later."""
        try:
            self._ledger.clear(tp.topic, tp.partition, offset)
        except KleinEditError as exc:
            self._metrics.ledger_clear_failures.inc()
            log.warning("ledger.clear_failed", code=exc.code.value, error=exc.message)


class RecordObserver:
    """Takes one attempt's stage events: cancel checks, progress events, and the durable GPU-run count.

    Only runs that really start are counted, so a crash is blamed on the one record on the GPU, never on
    the records fetched or queued behind it. A first delivery is counted off the GPU thread as it starts
    (the GPU never waits for S3; a crash within the first milliseconds of its edit may go uncounted
    once). A redelivery, the suspicious case, is counted on the GPU thread before its edit, so that count
    is durable before any risk.
    """

    def __init__(
        self,
        ctx: EditContext,
        *,
        tp: TopicPartition,
        offset: int,
        reporter: ProgressReporter | None,
        cancels: CancelRegistry,
        abandon: asyncio.Event,
        ledger: Ledger,
        io: Executor,
        max_attempts: int,
    ) -> None:
        self._ctx = ctx
        self._tp = tp
        self._offset = offset
        self._reporter = reporter
        self._cancels = cancels
        self._abandon = abandon
        self._ledger = ledger
        self._io = io
        self._max_attempts = max_attempts
        self._loop = asyncio.get_running_loop()
        self._count_on_gpu_thread = False

    async def before_gpu(self) -> None:
        """Check the durable counts before the GPU: a record whose edit started `max_attempts` times
        without finishing is a `PoisonMessage`."""
        ctx, tp = self._ctx, self._tp
        try:
            entry = await self._loop.run_in_executor(
                self._io, self._ledger.record_pickup, tp.topic, tp.partition, self._offset
            )
        except KleinEditError as exc:
            log.warning("ledger.unavailable", error=exc.message)
            entry = LedgerEntry(pickups=ctx.attempt, gpu_runs=0)
        ctx.attempt = max(ctx.attempt, entry.gpu_runs + 1)
        if entry.gpu_runs >= self._max_attempts:
            raise PoisonMessage(
                f"its edit started {entry.gpu_runs} times without finishing (it crashed or hung the worker)"
            )
        self._count_on_gpu_thread = entry.pickups > 1 or ctx.attempt > 1

    def on_event(self, event: EditEvent) -> None:
        reporter = self._reporter
        match event:
            case StageStarted(stage=stage, total_steps=total):
                when = _CANCEL_POINTS.get(stage)
                if when is not None and self._ctx.request_id in self._cancels:
                    raise EditCanceled(f"canceled by a control command {when}")
                if reporter is not None:
                    reporter.stage(stage, total_steps=total)
            case GpuRunStarting(total_steps=total):  # on the GPU thread
                self._check_step(0, total)
                if self._count_on_gpu_thread:
                    self._count_run()
            case GpuStarted(total_steps=total):  # on the event loop, as the GPU thread takes the job
                if not self._count_on_gpu_thread:
                    self._loop.run_in_executor(self._io, self._count_run)
                if reporter is not None:
                    reporter.stage(EditStage.EDITING, total_steps=total)
            case StepFinished(done=done, total=total):  # on the GPU thread, between denoising steps
                self._check_step(done, total)
                if reporter is not None:
                    self._loop.call_soon_threadsafe(reporter.step, done, total)

    def close(self) -> None:
        """No progress events after the result."""
        if self._reporter is not None:
            self._reporter.close()

    def _check_step(self, done: int, total: int) -> None:
        if self._abandon.is_set():
            raise EditCanceled("worker is shutting down past its grace period")
        if self._ctx.request_id in self._cancels:
            raise EditCanceled(f"canceled by a control command after step {done}/{total}")

    def _count_run(self) -> None:
        try:
            self._ledger.record_gpu_run(self._tp.topic, self._tp.partition, self._offset)
        except KleinEditError as exc:
            log.warning("ledger.unavailable", error=exc.message)


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
