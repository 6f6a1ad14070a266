"""The Kafka side of the worker: poll, overlap the stages of several records, publish, commit.

Delivery is at-least-once into an idempotent sink:
- a record's offset is committed only after its output is in S3 and its result event is acknowledged,
  and per partition only up to the lowest record still in flight (`PartitionOffsets`);
- while records are in flight the consumer keeps polling (with partitions paused when full), so an edit
  longer than `max_poll_interval_ms` never costs the group membership;
- outputs have a deterministic key and are written with a conditional put, so a redelivered request is
  answered from S3 without the GPU.

Each record runs as one task: prepare (fetch + decode, I/O threads) -> GPU (one thread, chosen by the
`GpuLane`) -> store (encode + upload, I/O threads) -> publish. Records overlap, so the GPU works on one
while the next is fetched and the previous is uploaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from consumer import kafka as kafka_io
from consumer.codec import decode_request, encode_event, salvage_request_id
from consumer.control import CancelRegistry, ControlReader
from consumer.fate import Action, InternalError, PoisonMessage, decide
from consumer.gpu import GpuLane
from consumer.lanes import LaneShare
from consumer.metrics import WorkerMetrics
from consumer.offsets import PartitionOffsets
from consumer.processor import EditContext, EditProcessor, PreparedEdit, Store
from consumer.progress import ProgressReporter
from consumer.settings import KafkaSettings, Settings
from pipeline import EditCanceled, Editor
from schemas.errors import ErrorCode, KleinEditError
from schemas.progress import EditProgressed, EditStage
from schemas.requests import EditRequest
from schemas.results import EditCompleted
from storage import LedgerEntry

log = structlog.get_logger("klein_edit.worker")

EXIT_OK = 0
EXIT_FATAL = 70  # EX_SOFTWARE: the device is unusable; the orchestrator should replace the process


class Ledger(Protocol):
    """Durable attempt counts per record (`storage.AttemptLedger` is the real one)."""

    def record_pickup(self, topic: str, partition: int, offset: int) -> LedgerEntry: ...
    def record_gpu_run(self, topic: str, partition: int, offset: int) -> LedgerEntry: ...
    def clear(self, topic: str, partition: int, offset: int) -> None: ...


class WorkerState:
    """What the health endpoints report."""

    def __init__(self) -> None:
        self.model_ready = False
        self.in_group = False
        self.draining = False
        self.consume_task: asyncio.Task[Any] | None = None
        self.last_loop_at = time.monotonic()
        self.gpu: GpuLane | None = None
        self.edit_timeout_s: float | None = None

    @property
    def ready(self) -> bool:
        return self.model_ready and self.in_group and not self.draining

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


@dataclass
class _InFlight:
    record: ConsumerRecord[bytes, bytes]
    task: asyncio.Task[None]
    request_id: str
    lane: int


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: EditWorker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._worker._commit_ready()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._worker._on_assigned(assigned)


class EditWorker:
    def __init__(
        self,
        settings: Settings,
        *,
        editor_factory: Callable[[], Editor],
        store: Store,
        ledger: Ledger,
        metrics: WorkerMetrics | None = None,
        state: WorkerState | None = None,
        gpu: GpuLane | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or WorkerMetrics()
        self.state = state or WorkerState()
        self.gpu = gpu or GpuLane(low_lane_share=settings.kafka.low_lane_share)
        self.state.gpu = self.gpu
        self.state.edit_timeout_s = settings.worker.edit_timeout_s
        self._editor_factory = editor_factory
        self._store = store
        self._ledger = ledger
        self._io = ThreadPoolExecutor(max_workers=8, thread_name_prefix="klein-io")
        self._lanes = {topic: lane for lane, topic in enumerate(settings.kafka.request_topics)}
        self._cancels = CancelRegistry(settings.worker.canceled_ids_capacity)
        self._control = ControlReader(settings.kafka, self._cancels)
        self._next_offset: dict[TopicPartition, int] = {}  # one past the last record admitted
        self._lane_share = LaneShare(settings.kafka.low_lane_share)
        self._offsets: dict[TopicPartition, PartitionOffsets] = {}
        self._in_flight: dict[tuple[TopicPartition, int], _InFlight] = {}
        self._commit_lock = asyncio.Lock()
        self._abandon = asyncio.Event()
        self._fatal: KleinEditError | None = None
        self._processor: EditProcessor | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._paused: set[TopicPartition] = set()

    # -- lifecycle -------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> int:
        """Load the model, join the group, consume until `stop` is set; returns the exit code."""
        self.state.consume_task = asyncio.current_task()
        editor = await self._load_editor()
        self._processor = EditProcessor(
            self.settings,
            store=self._store,
            editor=editor,
            gpu=self.gpu,
            io=self._io,
            worker_name=self.settings.worker.name,
        )
        kafka = self.settings.kafka
        self._producer = kafka_io.make_producer(kafka)
        await _start_client(self._producer, kafka, stop)
        self._consumer = kafka_io.make_consumer(kafka, group_id=kafka.group_id)
        control_stop = asyncio.Event()
        control_task = asyncio.create_task(self._control.run(control_stop), name="control-reader")
        try:
            # Cancels published before this worker started must be known before its first pickup.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._control.caught_up.wait()), timeout=15.0)
            await _start_client(self._consumer, kafka, stop)
            self._consumer.subscribe(kafka.request_topics, listener=_Rebalance(self))
            log.info(
                "worker.started", topics=kafka.request_topics, group=kafka.group_id, model=editor.model_name
            )
            try:
                await self._consume(stop)
                await self._drain()
            finally:
                await self._commit_ready()
                await self._consumer.stop()
        finally:
            control_stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(control_task, timeout=5.0)
            await self._producer.stop()
            self._io.shutdown(wait=False, cancel_futures=True)
        if self._fatal is not None:
            log.error("worker.fatal", code=self._fatal.code.value, error=self._fatal.message)
            return EXIT_FATAL
        log.info("worker.stopped")
        return EXIT_OK

    async def _load_editor(self) -> Editor:
        started = time.perf_counter()
        editor = await self.gpu.run(self._editor_factory)
        if self.settings.pipeline.warmup:
            await self.gpu.run(editor.warm_up)
        seconds = time.perf_counter() - started
        self.metrics.model_load_seconds.set(seconds)
        self._observe_gpu_memory(editor)
        self.state.model_ready = True
        self.gpu.reset_clock()
        log.info("model.ready", model=editor.model_name, load_s=round(seconds, 2))
        return editor

    async def _consume(self, stop: asyncio.Event) -> None:
        assert self._consumer is not None
        next_lag_at = 0.0
        while not stop.is_set() and self._fatal is None:
            self.state.last_loop_at = time.monotonic()
            free = self.settings.worker.max_in_flight - len(self._in_flight)
            self._apply_pauses(full=free <= 0)
            batches = await self._consumer.getmany(timeout_ms=100, max_records=max(free, 1))
            for tp, records in batches.items():
                self._admit(tp, records)
            await self._commit_ready()
            if len(self._lanes) > 1:
                await self._learn_positions()
            if time.monotonic() >= next_lag_at:
                next_lag_at = time.monotonic() + 5.0
                await self._observe_lag()

    def _admit(self, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        assert self._consumer is not None
        for record in records:
            if (tp, record.offset) in self._in_flight:
                continue  # refetched after a rebalance while it still runs here
            lane = self._lane_of(tp)
            waiting = self._waiting_lanes() | {lane}
            if (
                len(self._in_flight) >= self.settings.worker.max_in_flight
                or self._lane_share.due(waiting) != lane
            ):
                # Full, or not this lane's turn (fetched despite a pause, or in the same batch): read it
                # again later.
                self._consumer.seek(tp, record.offset)
                return
            self._lane_share.take_turn(waiting)
            # A turn handed down by the share queues for the GPU in the lane it was taken from, so the
            # records admitted after it from that lane do not take it away again.
            self._start(tp, record, gpu_lane=min(waiting))
            self._next_offset[tp] = record.offset + 1

    def _start(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes], *, gpu_lane: int) -> None:
        request_id = (
            salvage_request_id(record.value, record.key)
            or f"invalid:{tp.topic}:{tp.partition}:{record.offset}"
        )
        self._offsets.setdefault(tp, PartitionOffsets()).start(record.offset)
        lane = self._lane_of(tp)
        task = asyncio.create_task(self._handle(tp, record, request_id, gpu_lane), name=f"edit-{request_id}")
        self._in_flight[(tp, record.offset)] = _InFlight(record, task, request_id, lane)
        self.metrics.in_flight.set(len(self._in_flight))

    async def _drain(self) -> None:
        """Stop fetching; let in-flight edits finish within the grace period, then give up on the rest."""
        assert self._consumer is not None
        self.state.draining = True
        grace = self.settings.worker.drain_grace_s
        if self._fatal is not None:
            grace = 0.0
        log.info("worker.draining", in_flight=len(self._in_flight), grace_s=grace)
        deadline = time.monotonic() + grace
        self._apply_pauses(full=True)
        while self._in_flight and time.monotonic() < deadline:
            self.state.last_loop_at = time.monotonic()
            # Polling paused partitions returns nothing but keeps this member in the group.
            await self._consumer.getmany(timeout_ms=100)
            await self._commit_ready()
        if self._in_flight:
            log.warning("worker.abandoning", records=len(self._in_flight))
            self._abandon.set()
            for key, flight in list(self._in_flight.items()):
                flight.task.cancel()
                self._offsets[key[0]].abandon(key[1])
            await asyncio.gather(*(f.task for f in self._in_flight.values()), return_exceptions=True)
            self._in_flight.clear()

    # -- one record ------------------------------------------------------------------------------------

    async def _handle(
        self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes], request_id: str, lane: int
    ) -> None:
        structlog.contextvars.bind_contextvars(
            request_id=request_id, topic=tp.topic, partition=tp.partition, offset=record.offset
        )
        assert self._processor is not None
        ctx = EditContext(request_id=request_id, picked_up=time.time(), record_timestamp_ms=record.timestamp)
        try:
            result = await self._attempt_until_settled(tp, record, ctx, lane)
            if result is not None:
                await self._publish_result(result)
                self._log_summary(result)
                self._observe_gpu_memory(self._processor.editor)
                self._finish(tp, record.offset)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Publishing only fails here when the worker is abandoning; the record stays uncommitted.
            log.exception("edit.unfinished")
        finally:
            self._in_flight.pop((tp, record.offset), None)
            self.metrics.in_flight.set(len(self._in_flight))

    async def _attempt_until_settled(
        self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes], ctx: EditContext, lane: int
    ) -> EditCompleted | None:
        """Run the record until it succeeds or `decide` settles its fate; None means: do not commit."""
        assert self._processor is not None
        tries = 0
        while True:
            tries += 1
            ctx.attempt = tries
            try:
                request = decode_request(record.value, max_bytes=self.settings.kafka.max_request_bytes)
                return await self._run_stages(ctx, request, lane, tp=tp, offset=record.offset)
            except KleinEditError as exc:
                error = exc
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("edit.unexpected_error")
                error = InternalError(f"{type(exc).__name__}: {exc}")
            worker = self.settings.worker
            verdict = decide(
                error,
                attempt=ctx.attempt,
                max_attempts=worker.max_attempts,
                backoff_s=worker.retry_backoff_s,
                backoff_max_s=worker.retry_backoff_max_s,
            )
            if verdict.action is Action.RETRY:
                self.metrics.retries.labels(code=error.code.value).inc()
                log.warning(
                    "edit.retrying",
                    code=error.code.value,
                    error=error.message,
                    attempt=ctx.attempt,
                    backoff_s=verdict.backoff_s,
                )
                await asyncio.sleep(verdict.backoff_s)
                continue
            if verdict.action is Action.CRASH:
                self._fatal = error
                return None
            if verdict.action is Action.DEAD_LETTER:
                await self._dead_letter(record, error, ctx.attempt)
            return self._processor.unsuccessful(ctx, error)

    async def _run_stages(
        self, ctx: EditContext, request: EditRequest, lane: int, *, tp: TopicPartition, offset: int
    ) -> EditCompleted:
        assert self._processor is not None
        reporter = self._reporter_for(ctx, request)
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

    def _reporter_for(self, ctx: EditContext, request: EditRequest) -> ProgressReporter | None:
        wanted = request.progress if request.progress is not None else self.settings.worker.progress
        if not wanted:
            return None
        return ProgressReporter(
            request_id=ctx.request_id,
            worker=self.settings.worker.name,
            interval_s=self.settings.worker.progress_interval_s,
            emit=self._emit_progress,
            picked_up=time.monotonic() - (time.time() - ctx.picked_up),
        )

    def _emit_progress(self, event: EditProgressed) -> None:
        """Fire and forget: the producer batches it; a failure costs one progress event, nothing more."""
        if self._producer is None:
            return
        send = self._producer.send(
            self.settings.kafka.progress_topic, encode_event(event), key=event.request_id.encode()
        )
        asyncio.ensure_future(send).add_done_callback(_ignore_result)

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
        if entry.gpu_runs >= self.settings.worker.max_attempts:
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

    def _finish(self, tp: TopicPartition, offset: int) -> None:
        self._offsets.setdefault(tp, PartitionOffsets()).finish(offset)
        asyncio.get_running_loop().run_in_executor(self._io, self._clear_ledger, tp, offset)

    def _clear_ledger(self, tp: TopicPartition, offset: int) -> None:
        with contextlib.suppress(KleinEditError):
            self._ledger.clear(tp.topic, tp.partition, offset)

    # -- publishing ------------------------------------------------------------------------------------

    async def _publish_result(self, result: EditCompleted) -> None:
        await self._send(
            self.settings.kafka.result_topic, encode_event(result), key=result.request_id.encode()
        )
        self.metrics.observe_result(result)

    async def _dead_letter(
        self, record: ConsumerRecord[bytes, bytes], error: KleinEditError, attempts: int
    ) -> None:
        headers = [
            (kafka_io.DLQ_ORIGINAL_TOPIC, record.topic.encode()),
            (kafka_io.DLQ_ORIGINAL_PARTITION, str(record.partition).encode()),
            (kafka_io.DLQ_ORIGINAL_OFFSET, str(record.offset).encode()),
            (kafka_io.DLQ_ERROR_CODE, error.code.value.encode()),
            (kafka_io.DLQ_ERROR_MESSAGE, error.message[:1000].encode("utf-8", "replace")),
            (kafka_io.DLQ_ATTEMPTS, str(attempts).encode()),
        ]
        await self._send(self.settings.kafka.dlq_topic, record.value, key=record.key, headers=headers)
        self.metrics.dead_lettered.labels(code=error.code.value).inc()
        log.warning("edit.dead_lettered", code=error.code.value, error=error.message, attempts=attempts)

    async def _send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Send and wait for the ack, retrying through broker outages until acked or abandoned."""
        assert self._producer is not None
        delay = 0.5
        while True:
            try:
                await self._producer.send_and_wait(topic, value=value, key=key, headers=headers)
                return
            except KafkaError as exc:
                if self._abandon.is_set():
                    raise
                log.warning("publish.retrying", topic=topic, error=repr(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    # -- offsets, pauses, rebalances -------------------------------------------------------------------

    async def _commit_ready(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        async with self._commit_lock:
            assigned = consumer.assignment()
            to_commit = {}
            for tp, offsets in self._offsets.items():
                offset = offsets.committable()
                # A partition that moved to another member is not ours to commit: its owner redoes the record.
                if offset is not None and tp in assigned:
                    to_commit[tp] = offset
            if not to_commit:
                return
            try:
                await consumer.commit(to_commit)
            except KafkaError as exc:
                log.warning("commit.failed", error=repr(exc), partitions=len(to_commit))
                return
            for tp, offset in to_commit.items():
                self._offsets[tp].committed = offset

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        assert self._consumer is not None
        self.state.in_group = True
        for tp in assigned:
            self._next_offset.pop(tp, None)  # relearned: the committed position may have moved
            offsets = self._offsets.get(tp)
            if offsets is None:
                continue
            # The partition came back: don't redo what already finished here but was not yet committed.
            if not offsets.in_flight and offsets.highest_done is not None and offsets.abandoned_at is None:
                self._consumer.seek(tp, offsets.highest_done + 1)
            offsets.committed = None
        # aiokafka forgets pauses on every rebalance: restore them before the next fetch.
        self._paused.clear()
        full = len(self._in_flight) >= self.settings.worker.max_in_flight or self.state.draining
        self._apply_pauses(full=full)
        log.info("partitions.assigned", partitions=sorted(f"{tp.topic}-{tp.partition}" for tp in assigned))

    def _apply_pauses(self, *, full: bool) -> None:
        """Pause everything when full; otherwise pause the lanes `_held_lanes` holds back."""
        assert self._consumer is not None
        assigned = self._consumer.assignment()
        wanted = set(assigned) if full else self._lanes_to_hold(assigned)
        if wanted != self._paused or (wanted and not wanted <= set(self._consumer.paused())):
            to_resume = (self._paused - wanted) & assigned
            if to_resume:
                self._consumer.resume(*to_resume)
            if wanted:
                self._consumer.pause(*wanted)
            self._paused = wanted

    def _lanes_to_hold(self, assigned: set[TopicPartition]) -> set[TopicPartition]:
        held = self._held_lanes()
        return {tp for tp in assigned if self._lane_of(tp) in held}

    def _lane_of(self, tp: TopicPartition) -> int:
        return self._lanes.get(tp.topic, len(self._lanes))

    def _held_lanes(self) -> set[int]:
        """Every lane but the one whose turn it is (`LaneShare`), while any lane has work.

        A lane has work while it has records not yet admitted or edits in flight: an urgent edit on the
        GPU holds the lower lanes back as its backlog does, so the slot stays free for the next urgent
        record instead of going to a long low-lane edit that would then run before it.
        """
        due = self._lane_share.due(self._waiting_lanes())
        return set() if due is None else {lane for lane in self._lanes.values() if lane != due}

    def _waiting_lanes(self) -> set[int]:
        assert self._consumer is not None
        lanes = {flight.lane for flight in self._in_flight.values()}
        lanes.update(self._lane_of(tp) for tp in self._consumer.assignment() if self._unread(tp) > 0)
        return lanes

    def _unread(self, tp: TopicPartition) -> int:
        """Records of `tp` not yet admitted; 1 ("maybe some") until the first fetch tells us."""
        assert self._consumer is not None
        highwater: int | None = self._consumer.highwater(tp)
        if highwater is None or tp not in self._next_offset:
            return 1
        return max(0, highwater - self._next_offset[tp])

    async def _learn_positions(self) -> None:
        """Where each newly assigned partition starts, so lane backlogs count records never admitted."""
        assert self._consumer is not None
        for tp in self._consumer.assignment() - self._next_offset.keys():
            with contextlib.suppress(KafkaError, asyncio.TimeoutError):
                self._next_offset[tp] = await asyncio.wait_for(self._consumer.position(tp), timeout=1.0)

    async def _observe_lag(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        assigned = list(consumer.assignment())
        if not assigned:
            return
        with contextlib.suppress(KafkaError, asyncio.TimeoutError):
            ends = await asyncio.wait_for(consumer.end_offsets(assigned), timeout=2.0)
            for tp in assigned:
                committed = await asyncio.wait_for(consumer.committed(tp), timeout=2.0)
                lag = ends.get(tp, 0) - (committed or 0)
                self.metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(max(lag, 0))
        if self._processor is not None:
            self.metrics.gpu_busy_ratio.set(self.gpu.duty_cycle)

    def _observe_gpu_memory(self, editor: Editor) -> None:
        stats = editor.memory_stats()
        self.metrics.gpu_memory.labels(kind="allocated").set(stats.get("allocated_bytes", 0.0))
        self.metrics.gpu_memory.labels(kind="peak").set(stats.get("peak_bytes", 0.0))

    # -- logging ---------------------------------------------------------------------------------------

    def _log_summary(self, result: EditCompleted) -> None:
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


class BrokerUnreachable(Exception):
    """The brokers could not be reached at start-up within the connection budget."""


async def _start_client(
    client: AIOKafkaProducer | AIOKafkaConsumer, kafka: KafkaSettings, stop: asyncio.Event
) -> None:
    """Start an aiokafka client, retrying while the brokers are down (a rollout racing the cluster).

    Gives up after `kafka.startup_timeout_s` with one clear message; the orchestrator restarts us.
    """
    deadline = time.monotonic() + kafka.startup_timeout_s
    delay = 0.5
    while True:
        try:
            await client.start()
            return
        except KafkaError as exc:
            await client.stop()
            if stop.is_set() or time.monotonic() + delay > deadline:
                raise BrokerUnreachable(
                    f"cannot reach Kafka at {kafka.bootstrap_servers} ({exc}); check "
                    "KLEIN_EDIT_KAFKA__BOOTSTRAP_SERVERS and the security settings"
                ) from exc
            log.warning("kafka.unreachable", error=repr(exc), retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def _ignore_result(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.debug("progress.send_failed", error=repr(future.exception()))
