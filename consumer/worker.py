"""The Kafka side of the worker: poll, overlap the stages of several records, publish, commit.

Delivery is at-least-once into an idempotent sink:
- a record's offset is committed only after its output is in S3 and its result event is acknowledged,
  and per partition only up to the lowest record still in flight (`commits.CommitTracker`);
- while records are in flight the consumer keeps polling (with partitions paused when full), so an edit
  longer than `max_poll_interval_ms` never costs the group membership;
- outputs have a deterministic key and are written with a conditional put, so a redelivered request is
  answered from S3 without the GPU.

Each record runs as one task (`handler.RecordHandler` around `stages.EditStages.run`): checks, fetch and
decode (I/O threads) -> edit (the one GPU thread) -> post-edit checks -> upload (I/O threads) -> publish.
Records overlap, so the GPU works on one while the next is fetched and the previous is uploaded.
`admission.Admission` says which fetched records start and which partitions to pause; the worker
starts them and registers them in the one in-flight registry (`commits.CommitTracker`).

The worker's life, in uvicorn's shape: `startup()` (load the model while waiting for Kafka and S3, join
the group), `main_loop()` with its periodic work in `on_tick()`, `shutdown()` (drain); what startup
opened is closed once, in reverse, on an `AsyncExitStack`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    IllegalSaslStateError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    UnsupportedSaslMechanismError,
)

from consumer.admission import Admission
from consumer.backoff import Backoff
from consumer.commits import CommitTracker, Flight
from consumer.control import CancelRegistry, ControlReader
from consumer.gpu import GpuThread
from consumer.handler import Ledger, ProcessUnusable, RecordHandler, build_record_handler, observe_gpu_memory
from consumer.http.metrics import WorkerMetrics
from consumer.http.readiness import WorkerState
from consumer.kafka import clients as kafka_io
from consumer.kafka.access import AUTHORIZATION_ERRORS, AccessWatch
from consumer.kafka.codec import salvage_request_id
from consumer.kafka.lag import LagReporter
from consumer.kafka.settings import KafkaSettings
from consumer.moderation import Moderation
from consumer.provenance import OutputSigner
from consumer.settings import Settings
from consumer.stages import Store
from consumer.url_fetch import UrlFetcher
from pipeline import Editor
from pipeline.signing import ManifestSigner
from schemas.errors import KleinEditError

__all__ = ["EXIT_FATAL", "EXIT_OK", "EditWorker", "KafkaAccessDenied", "Ledger", "WorkerState"]

log = structlog.get_logger("klein_edit.worker")

EXIT_OK = 0
EXIT_FATAL = 70  # EX_SOFTWARE: the device is unusable; the orchestrator should replace the process
EXIT_RECYCLE = 75  # EX_TEMPFAIL: a recycling limit was reached and the worker drained; restart it
# While the model loads, one more line every this many seconds (jittered by +-20 %).
MODEL_LOADING_LOG_S = 30.0
# Topics are checked this often while all exist (every tick while one is missing), seconds.
TOPIC_CHECK_S = 15.0
TICK_S = 5.0  # the main loop's periodic work (`EditWorker.on_tick`), seconds


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: EditWorker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._worker.partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._worker.partitions_assigned(assigned)


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
        gpu: GpuThread | None = None,
        signer: OutputSigner | None = None,
    ) -> None:
        """`signer` (C2PA) defaults to the one `settings.provenance` configures, checked here, before the
        model loads: raises `SigningSetupError` for a key or chain that cannot sign."""
        self.settings = settings
        self.metrics = metrics or WorkerMetrics()
        self.state = state or WorkerState()
        self.gpu = gpu or GpuThread(low_lane_share=settings.kafka.low_lane_share)
        self.state.gpu = self.gpu
        self.state.edit_timeout_s = settings.worker.edit_timeout_s
        self._editor_factory = editor_factory
        self._signer = signer if signer is not None else ManifestSigner.from_settings(settings.provenance)
        self._store = store
        self._ledger = ledger
        self._io = ThreadPoolExecutor(max_workers=8, thread_name_prefix="klein-io")
        self._cancels = CancelRegistry(settings.worker.canceled_ids_capacity)
        self._control = ControlReader(settings.kafka, self._cancels, state=self.state, metrics=self.metrics)
        self._commits = CommitTracker()
        self._lag = LagReporter(self.metrics)
        self._access = AccessWatch(
            self.state,
            self.metrics,
            bootstrap=settings.kafka.bootstrap_servers,
            max_delay_s=min(30.0, settings.kafka.max_poll_interval_ms / 2000),
        )
        self._next_topic_check_at = 0.0
        self._missing_request_topics: set[str] = set()
        self._request_topic_shapes: dict[str, int] = {}  # request topic -> partition count, last seen
        self._abandon = asyncio.Event()
        self._handler: RecordHandler | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._admission: Admission | None = None
        # Set once, by the record task whose error says the process is unusable (`ProcessUnusable`).
        self._fatal: KleinEditError | None = None
        self._moderation: Moderation | None = None
        self._crashed = asyncio.Event()
        self._exit_stack = contextlib.AsyncExitStack()  # replaced by `run`'s own
        self._edits_done = 0
        self._recycling: tuple[str, str] | None = None  # (reason label, what was reached)
        self._clean_exit = False

    # -- lifecycle -------------------------------------------------------------------------------------

    async def run(
        self,
        stop: asyncio.Event,
        *,
        before_consuming: Callable[[asyncio.Event], Coroutine[Any, Any, bool]] | None = None,
    ) -> int:
        """Load the model, join the group, consume until `stop` is set; returns the exit code.

        The model loads (minutes on a GPU node) while, at the same time, `before_consuming(stop)` (e.g.
        the output-bucket check: True once fine, False when `stop` came first) and the brokers are
        waited for, so an S3 or Kafka outage at deploy time neither delays nor repeats the load.
        Raises what the load raises, and `KafkaAccessDenied` when the brokers refuse the worker.
        """
        self.state.consume_task = asyncio.current_task()
        async with contextlib.AsyncExitStack() as stack:
            self._exit_stack = stack
            if not await self.startup(stop, before_consuming):
                return EXIT_OK
            await self.main_loop(stop)
            await self.shutdown()
        if self._fatal is not None:
            log.error("worker.fatal", code=self._fatal.code.value, error=self._fatal.message)
            return EXIT_FATAL
        if self._recycling is not None:
            log.info(
                "worker.recycled",
                reason=self._recycling[0],
                detail=self._recycling[1],
                exit_code=EXIT_RECYCLE,
            )
            return EXIT_RECYCLE
        log.info("worker.stopped")
        return EXIT_OK

    async def startup(
        self,
        stop: asyncio.Event,
        before_consuming: Callable[[asyncio.Event], Coroutine[Any, Any, bool]] | None = None,
    ) -> bool:
        """Load the model, start the clients and the control reader, join the group; False when `stop`
        came first. Everything opened here is closed by the exit stack, in reverse, however `run` ends."""
        stack = self._exit_stack
        stack.callback(self._io.shutdown, wait=False, cancel_futures=True)
        kafka_io.require_codecs()
        kafka = self.settings.kafka
        producer = kafka_io.make_producer(kafka)
        stack.push_async_callback(producer.stop)
        editor = await self._start_up(producer, stop, before_consuming)
        if editor is None:
            log.info("worker.stopped", before="starting up")
            return False
        # One HTTP session for every URL read of this worker's life, closed with it.
        urls = None
        if self.settings.url_inputs.enabled:
            urls = await stack.enter_async_context(UrlFetcher(self.settings.url_inputs))
        self._handler = build_record_handler(
            self.settings,
            moderation=self._moderation,
            editor=editor,
            store=self._store,
            ledger=self._ledger,
            producer=producer,
            gpu=self.gpu,
            io=self._io,
            metrics=self.metrics,
            cancels=self._cancels,
            abandon=self._abandon,
            signer=self._signer,
            urls=urls,
        )
        consumer = self._consumer = kafka_io.make_consumer(kafka, group_id=kafka.group_id)
        self._admission = Admission(
            consumer,
            self._commits.flights,
            request_topics=kafka.request_topics,
            max_in_flight=self.settings.worker.max_in_flight,
            low_lane_share=kafka.low_lane_share,
        )
        control_stop = asyncio.Event()
        control_task = asyncio.create_task(self._control.run(control_stop), name="control-reader")
        stack.push_async_callback(_stop_task, control_stop, control_task)
        # Cancels published before this worker started must be known before its first pickup.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._control.caught_up.wait()), timeout=15.0)
        stack.push_async_callback(consumer.stop)
        if not await self._start_client(consumer, stop):
            return False
        stack.push_async_callback(self._commit_on_exit)
        consumer.subscribe(kafka.request_topics, listener=_Rebalance(self))
        log.info("worker.started", topics=kafka.request_topics, group=kafka.group_id, model=editor.model_name)
        return True

    async def shutdown(self) -> None:
        """Drain: stop fetching, let in-flight edits finish within the grace period, abandon the rest.
        The exit stack then commits what is done and closes what `startup` opened."""
        await self._drain()
        self._clean_exit = True

    async def _commit_on_exit(self) -> None:
        """The last commit. After an exception, records fetched but never admitted lie below the
        consumer's position: only what was answered is committed then, never the position."""
        await self._commits.commit_ready(self._consumer, by_position=self._clean_exit)

    async def _start_up(
        self,
        producer: AIOKafkaProducer,
        stop: asyncio.Event,
        before_consuming: Callable[[asyncio.Event], Coroutine[Any, Any, bool]] | None,
    ) -> Editor | None:
        """Load the model, start `producer` and run `before_consuming`, all at once: the editor once
        all are done, None when `stop` came first. The first failure (a failed load, refused
        credentials) is raised at once, and the rest is cancelled."""
        load = asyncio.create_task(self._load_editor(), name="model-load")
        waits: list[asyncio.Task[Any]] = [
            load,
            asyncio.create_task(self._start_client(producer, stop), name="kafka-start"),
        ]
        if before_consuming is not None:
            waits.append(asyncio.create_task(before_consuming(stop), name="before-consuming"))
        stopped = asyncio.create_task(stop.wait(), name="stop-wait")
        pending: set[asyncio.Task[Any]] = set(waits)
        try:
            while pending and not stop.is_set():
                done, still = await asyncio.wait({*pending, stopped}, return_when=asyncio.FIRST_COMPLETED)
                pending = still - {stopped}
                for task in done - {stopped}:
                    task.result()  # raises a failed load or refused credentials now, not after the rest
            if stop.is_set():
                return None
            editor: Editor = load.result()
            return editor
        finally:
            for task in [*waits, stopped]:
                task.cancel()
            await asyncio.gather(*waits, stopped, return_exceptions=True)

    async def _load_editor(self) -> Editor:
        started = time.perf_counter()
        log.info("model.loading", model=self.settings.pipeline.model)
        heartbeat = asyncio.create_task(_log_while_loading(started), name="model-loading-log")
        try:
            moderation = self.settings.moderation
            if moderation.enabled:
                # First, on the GPU thread: a missing classifier (seconds to find) stops start-up with one
                # line before the editor (minutes to load) is loaded.
                self._moderation = await self.gpu.run(
                    Moderation.load,
                    moderation,
                    pipeline_device=self.settings.pipeline.device,
                    cache_dir=self.settings.pipeline.cache_dir,
                )
                log.info(
                    "moderation.ready",
                    model=self._moderation.images.model_id,
                    threshold=moderation.threshold,
                    on_gpu=self._moderation.on_gpu,
                )
            editor = await self.gpu.run(self._editor_factory)
            if self.settings.pipeline.warmup:
                await self.gpu.run(editor.warm_up)
        finally:
            heartbeat.cancel()
        seconds = time.perf_counter() - started
        self.metrics.model_load_seconds.set(seconds)
        observe_gpu_memory(self.metrics, editor)
        # The identity reads the model directory's JSON files: on the GPU thread, not the event loop.
        self.metrics.describe_model(await self.gpu.run(lambda: editor.identity))
        self.state.model_ready = True
        self.gpu.reset_clock()
        log.info("model.ready", model=editor.model_name, load_s=round(seconds, 2))
        return editor

    async def main_loop(self, stop: asyncio.Event) -> None:
        """Poll, admit and start records, commit what is done, until `stop` or a crash; the periodic
        work runs in `on_tick` every `TICK_S` seconds."""
        consumer, admission = self._consumer, self._admission
        assert consumer is not None
        assert admission is not None
        next_tick_at = 0.0
        while not stop.is_set() and not self._crashed.is_set() and self._recycling is None:
            self.state.last_loop_at = time.monotonic()
            free = admission.free
            admission.apply_pauses(full=free <= 0)
            try:
                batches = await consumer.getmany(timeout_ms=100, max_records=max(free, 1))
            except AUTHORIZATION_ERRORS as exc:
                # An ACL revoked or not granted yet: not ready and retried (consumer.kafka.access).
                delay_s = self._access.denied(exc)
                if delay_s:
                    await self._wait(stop, delay_s)
                continue
            except _AUTH_ERRORS as exc:
                raise KafkaAccessDenied(_access_message(self.settings.kafka, exc)) from exc
            self._access.polled()
            budget = self._edit_budget()
            for tp, records in batches.items():
                admitted = admission.admit(tp, records, limit=budget)
                for record, lane in admitted:
                    self._start(tp, record, lane)
                if budget is not None:
                    budget -= len(admitted)
            self._check_edit_limit()
            await self._commits.commit_ready(consumer)
            if admission.several_lanes:
                await admission.learn_positions()
            if time.monotonic() >= next_tick_at:
                next_tick_at = time.monotonic() + TICK_S
                await self.on_tick()

    async def _wait(self, stop: asyncio.Event, delay_s: float) -> None:
        """Wait `delay_s` or until `stop`, alive meanwhile (/livez): in-flight records keep running,
        aiokafka keeps heartbeating; nothing is fetched or committed until the next poll succeeds."""
        deadline = time.monotonic() + delay_s
        while not stop.is_set() and not self._crashed.is_set() and time.monotonic() < deadline:
            self.state.last_loop_at = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=min(1.0, deadline - time.monotonic()))

    async def on_tick(self) -> None:
        """Periodic work: missing topics, stuck records, lag and the GPU duty cycle."""
        consumer, admission = self._consumer, self._admission
        assert consumer is not None
        assert admission is not None
        await self._check_topics(consumer)
        self._check_memory_limits()
        self._observe_stuck(admission)
        await self._lag.observe(consumer)
        self.metrics.gpu_busy_ratio.set(self.gpu.duty_cycle)

    async def _check_topics(self, consumer: AIOKafkaConsumer) -> None:
        """Name missing request, result or DLQ topics on /readyz (checked every 5 s while any is
        missing, every `TOPIC_CHECK_S` otherwise; a request topic the broker refused is named as denied,
        any other topic the ACLs hide looks missing, and its message names both causes): the worker
        does not create them, and a group
        subscribed to a topic that does not exist would otherwise sit idle, looking healthy. A request
        topic that comes back, or changes its partition count, is subscribed to again."""
        if time.monotonic() < self._next_topic_check_at:
            return
        kafka = self.settings.kafka
        try:
            existing = await asyncio.wait_for(consumer.topics(), timeout=5.0)
        except (KafkaError, TimeoutError):
            return
        missing = [
            t for t in [*kafka.request_topics, kafka.result_topic, kafka.dlq_topic] if t not in existing
        ]
        self._resubscribe_if_recreated(consumer, missing)
        if missing:
            # The subscription's own metadata request names the request topics the broker refused.
            refused = set(consumer._client.cluster.unauthorized_topics)
            denied = [t for t in missing if t in refused]
            absent = [t for t in missing if t not in refused]
            parts = []
            if absent:
                parts.append(
                    f"Kafka topic(s) {', '.join(absent)} do not exist, or ACLs deny this worker DESCRIBE "
                    "on them: create them (docs/operations.md, Topics) or grant the ACLs (Kafka ACLs)"
                )
            if denied:
                parts.append(
                    f"ACLs deny this worker the topic(s) {', '.join(denied)} (TopicAuthorizationFailed): "
                    "grant them (docs/operations.md, Kafka ACLs)"
                )
            problem = "; ".join(parts)
            if self.state.problems.get("topics") != problem:
                log.error("kafka.topics_missing", topics=absent, denied=denied)
            self.state.problems["topics"] = problem
            self._next_topic_check_at = time.monotonic() + 5.0
        else:
            if self.state.problems.pop("topics", None) is not None:
                log.info("kafka.topics_found")
            self._next_topic_check_at = time.monotonic() + TOPIC_CHECK_S

    def _resubscribe_if_recreated(self, consumer: AIOKafkaConsumer, missing: list[str]) -> None:
        """A request topic deleted and created again (seen missing, or with another partition count) is a
        new topic to the group: aiokafka keeps the old one's assignment and never fetches the new one, so
        the worker subscribes again, which rejoins the group with fresh positions."""
        kafka = self.settings.kafka
        shapes = {
            t: len(consumer.partitions_for_topic(t) or ()) for t in kafka.request_topics if t not in missing
        }
        changed = [
            t
            for t, partitions in shapes.items()
            if t in self._missing_request_topics
            or self._request_topic_shapes.get(t, partitions) != partitions
        ]
        self._missing_request_topics = {t for t in missing if t in kafka.request_topics}
        self._request_topic_shapes = shapes
        if changed:
            log.warning("kafka.topics_recreated", topics=changed)
            consumer.unsubscribe()
            consumer.subscribe(kafka.request_topics, listener=_Rebalance(self))

    def _edit_budget(self) -> int | None:
        """Records this process may still admit under `max_edits` (None: no limit)."""
        limit = self.settings.worker.max_edits
        return max(0, limit - self._edits_done - len(self._commits.flights)) if limit else None

    def _check_edit_limit(self) -> None:
        limit = self.settings.worker.max_edits
        # Records admitted count: the ones in flight will finish in the drain, so stop admitting at the limit.
        if limit and self._recycling is None and self._edits_done + len(self._commits.flights) >= limit:
            self._recycle("edits", f"{limit} records (KLEIN_EDIT_WORKER__MAX_EDITS)")

    def _check_memory_limits(self) -> None:
        worker = self.settings.worker
        if self._recycling is not None:
            return
        if worker.max_rss_mb:
            rss_mb = _resident_mb()
            if rss_mb > worker.max_rss_mb:
                self._recycle("host_memory", f"{rss_mb:.0f} MB resident > {worker.max_rss_mb} MB")
                return
        if worker.max_gpu_reserved_mb and self._handler is not None:
            reserved_mb = self._handler.memory_stats().get("reserved_bytes", 0.0) / 2**20
            if reserved_mb > worker.max_gpu_reserved_mb:
                self._recycle(
                    "gpu_memory", f"{reserved_mb:.0f} MB reserved > {worker.max_gpu_reserved_mb} MB"
                )

    def _recycle(self, reason: str, detail: str) -> None:
        """Stop taking records, drain, exit with EXIT_RECYCLE: not ready from now on."""
        self._recycling = (reason, detail)
        self.metrics.recycles.labels(reason=reason).inc()
        self.state.problems["recycling"] = f"recycling after {detail}: draining, then exit {EXIT_RECYCLE}"
        log.warning("worker.recycling", reason=reason, detail=detail, in_flight=len(self._commits.flights))

    def _observe_stuck(self, admission: Admission) -> None:
        """Report records in flight past `worker.stuck_after_s` on /readyz and in metrics."""
        limit = self.settings.worker.stuck_after_s
        stuck = admission.older_than(limit)
        self.metrics.stuck_records.set(len(stuck))
        self.metrics.oldest_in_flight_seconds.set(admission.oldest_age())
        if not stuck:
            self.state.problems.pop("stuck", None)
            return
        oldest = stuck[0]
        problem = (
            f"{len(stuck)} record(s) in flight over {limit:.0f} s; oldest {oldest.record.topic}-"
            f"{oldest.record.partition}@{oldest.record.offset} ({oldest.request_id}), "
            f"{time.monotonic() - oldest.admitted_at:.0f} s"
        )
        if "stuck" not in self.state.problems:
            log.error("records.stuck", problem=problem)
        self.state.problems["stuck"] = problem

    def _start(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes], lane: int) -> None:
        """Run an admitted record as its own task, registered in flight until the task ends."""
        assert self._admission is not None
        request_id = _request_id_of(record) or f"invalid:{tp.topic}:{tp.partition}:{record.offset}"
        task = asyncio.create_task(self._handle(tp, record, request_id, lane), name=f"edit-{request_id}")
        self._commits.start(tp, record.offset, Flight(record, task, request_id, self._admission.lane_of(tp)))
        self.metrics.in_flight.set(len(self._commits.flights))

    async def _handle(
        self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes], request_id: str, lane: int
    ) -> None:
        assert self._handler is not None
        done = False
        try:
            done = await self._handler.handle(record, request_id, lane)
            self._edits_done += 1
        except ProcessUnusable as exc:
            if self._fatal is None:
                self._fatal = exc.error
            self._crashed.set()
        finally:
            if done:
                self._commits.finish(tp, record.offset)
            else:
                self._commits.abandon(tp, record.offset)  # it and everything after it stay uncommitted
            self.metrics.in_flight.set(len(self._commits.flights))

    async def _drain(self) -> None:
        """Stop fetching; let in-flight edits finish within the grace period, then give up on the rest."""
        consumer, admission = self._consumer, self._admission
        assert consumer is not None
        assert admission is not None
        self.state.draining = True
        grace = self.settings.worker.drain_grace_s
        if self._fatal is not None:
            grace = 0.0
        flights = self._commits.flights
        log.info("worker.draining", in_flight=len(flights), grace_s=grace)
        deadline = time.monotonic() + grace
        admission.apply_pauses(full=True)
        while flights and time.monotonic() < deadline:
            self.state.last_loop_at = time.monotonic()
            # Polling paused partitions returns nothing but keeps this member in the group.
            try:
                await consumer.getmany(timeout_ms=100)
            except AUTHORIZATION_ERRORS:
                # Still denied (consumer.kafka.access): wait for the edits, not for the ACL; what
                # finishes is committed once on exit, or redone by the partition's next owner.
                await asyncio.sleep(0.5)
                continue
            await self._commits.commit_ready(consumer)
        if flights:
            log.warning("worker.abandoning", records=len(flights))
            self._abandon.set()
            left = list(flights.items())
            for (tp, offset), flight in left:
                flight.task.cancel()
                self._commits.abandon(tp, offset)
            await asyncio.gather(*(flight.task for _, flight in left), return_exceptions=True)

    async def _start_client(self, client: AIOKafkaProducer | AIOKafkaConsumer, stop: asyncio.Event) -> bool:
        return await _start_kafka_client(client, self.settings.kafka, self.state, stop)

    async def partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """A rebalance started: commit what is done, and not ready until it ends (`partitions_assigned`);
        the lag of what this member gave up is no longer its to report."""
        self.state.in_group = False
        self._lag.forget(revoked)
        await self._commits.commit_ready(self._consumer)

    async def partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """A rebalance ended: restore pauses (aiokafka forgot them) and the resume positions."""
        assert self._consumer is not None
        assert self._admission is not None
        self.state.in_group = True
        self._admission.on_assigned(assigned, draining=self.state.draining)
        await self._commits.on_assigned(self._consumer, assigned)
        log.info("partitions.assigned", partitions=sorted(f"{tp.topic}-{tp.partition}" for tp in assigned))


def _request_id_of(record: ConsumerRecord[bytes, bytes]) -> str | None:
    """The record's request id for logs and its task's name, when one can be read; never raises, so no
    record can crash the consume loop (the handler refuses an undecodable record with INVALID_EVENT)."""
    try:
        return salvage_request_id(record.value, record.key, record.headers)
    except Exception:
        return None


def _resident_mb() -> float:
    """This process's resident set size in MB (Linux /proc; 0 where it cannot be read)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


async def _stop_task(stop: asyncio.Event, task: asyncio.Task[Any]) -> None:
    stop.set()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(task, timeout=5.0)


async def _log_while_loading(started: float) -> None:
    """One `model.still_loading` line every `MODEL_LOADING_LOG_S` (jittered) until cancelled."""
    while True:
        await asyncio.sleep(MODEL_LOADING_LOG_S * random.uniform(0.8, 1.2))
        log.info("model.still_loading", waited_s=round(time.perf_counter() - started, 1))


class KafkaAccessDenied(Exception):
    """The brokers refused the worker's credentials (or a cluster permission at start-up): retrying
    cannot help. A topic or group ACL that denies a running worker is not this: `consumer.kafka.access`."""


_AUTH_ERRORS = (
    SaslAuthenticationFailed,
    AuthenticationFailedError,
    UnsupportedSaslMechanismError,
    IllegalSaslStateError,
)
_ACCESS_ERRORS = (
    *_AUTH_ERRORS,
    TopicAuthorizationFailedError,
    GroupAuthorizationFailedError,
    ClusterAuthorizationFailedError,
)


def _access_message(kafka: KafkaSettings, exc: BaseException) -> str:
    return (
        f"Kafka at {kafka.bootstrap_servers} refused the worker ({type(exc).__name__}: {exc}); check "
        "KLEIN_EDIT_KAFKA__SECURITY_PROTOCOL, the SASL settings and the ACLs of the group and topics"
    )


async def _refused_credentials(kafka: KafkaSettings) -> BaseException | None:
    """Connect once to the first bootstrap broker: the authentication error, if that is what failed.

    aiokafka's bootstrap reports every failure as "unable to bootstrap", so a refused login would
    look like an outage; one direct connection tells them apart.
    """
    host, _, port = kafka.bootstrap_servers.split(",")[0].strip().rpartition(":")
    options = kafka_io.client_kwargs(kafka)
    options.pop("bootstrap_servers")
    try:
        conn = await asyncio.wait_for(create_conn(host.strip("[]"), int(port), **options), timeout=10.0)
    except _AUTH_ERRORS as exc:
        refused: BaseException = exc
        return refused
    except (OSError, KafkaError, TimeoutError, ValueError):
        return None
    conn.close()
    return None


async def _start_kafka_client(
    client: AIOKafkaProducer | AIOKafkaConsumer, kafka: KafkaSettings, state: WorkerState, stop: asyncio.Event
) -> bool:
    """Start an aiokafka client, retrying while the brokers are down; False when `stop` came first.

    A Kafka outage at deploy time must not cost the loaded model (minutes to load): the worker keeps
    it and retries with jittered backoff (0.5 s doubling to 30 s), not ready meanwhile (/readyz names
    the brokers). Retries are logged as warnings, as errors once they last `kafka.startup_timeout_s`.
    Raises `KafkaAccessDenied` when the brokers refuse the credentials: that needs an operator.
    """
    started = time.monotonic()
    backoff = Backoff(0.5, 30.0)
    while not stop.is_set():
        state.last_loop_at = time.monotonic()  # waiting for Kafka is alive: /livez stays 200
        try:
            await client.start()
        except KafkaError as exc:
            await client.stop()
            if isinstance(exc, _ACCESS_ERRORS):
                raise KafkaAccessDenied(_access_message(kafka, exc)) from exc
            refused = await _refused_credentials(kafka)
            if refused is not None:
                raise KafkaAccessDenied(_access_message(kafka, refused)) from refused
            delay = backoff.next()
            waited = time.monotonic() - started
            state.problems["kafka"] = (
                f"cannot reach Kafka at {kafka.bootstrap_servers} for {waited:.0f} s: {exc}"
            )
            level = log.error if waited >= kafka.startup_timeout_s else log.warning
            level(
                "kafka.unreachable",
                bootstrap=kafka.bootstrap_servers,
                error=repr(exc),
                waited_s=round(waited, 1),
                retry_in_s=round(delay, 2),
            )
            state.last_loop_at = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
            continue
        if state.problems.pop("kafka", None) is not None:
            log.info(
                "kafka.reachable",
                bootstrap=kafka.bootstrap_servers,
                waited_s=round(time.monotonic() - started, 1),
            )
        return True
    return False
