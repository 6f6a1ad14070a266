"""Cancellation: every worker reads the control topic on its own and remembers recent cancels.

The reader is not a member of the request group: each worker must see every cancel, whichever
partition the request sits on. It keeps a bounded set of recent ids (oldest forgotten first), so the
control topic can outlive any worker and never grows its memory.

A reader that cannot make progress (a batch it cannot decode, a broker it cannot reach) is never
silent: after `STALL_AFTER_S` (10 s) of failures it is a problem on /readyz (`WorkerState.problems`) and
`klein_edit_control_reader_stalled` is 1; every failure counts in `klein_edit_control_reader_errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import OrderedDict

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from consumer.backoff import Backoff, jittered
from consumer.http.metrics import WorkerMetrics
from consumer.http.readiness import WorkerState
from consumer.kafka import clients as kafka_io
from consumer.kafka.codec import decode_event
from consumer.kafka.settings import KafkaSettings
from schemas.control import CancelRequested
from schemas.errors import InvalidEvent

log = structlog.get_logger("klein_edit.control")

STALL_AFTER_S = 10.0  # failing this long makes the reader a readiness problem (a blip is not one)
PROBLEM = "control"


class CancelRegistry:
    """Thread-safe: the GPU thread asks between denoising steps, the event loop adds."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, request_id: str) -> None:
        with self._lock:
            self._ids[request_id] = None
            self._ids.move_to_end(request_id)
            while len(self._ids) > self._capacity:
                self._ids.popitem(last=False)

    def __contains__(self, request_id: object) -> bool:
        with self._lock:
            return request_id in self._ids

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)


class ControlReader:
    def __init__(
        self,
        kafka: KafkaSettings,
        registry: CancelRegistry,
        *,
        state: WorkerState | None = None,
        metrics: WorkerMetrics | None = None,
        stall_after_s: float = STALL_AFTER_S,
    ) -> None:
        self._kafka = kafka
        self._stall_after_s = stall_after_s
        self._registry = registry
        self._state = state or WorkerState()
        self._metrics = metrics or WorkerMetrics()
        self._consumer: AIOKafkaConsumer | None = None
        self._failing_since: float | None = None
        self.caught_up = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Read cancels until `stop`; starts at the beginning so cancels sent before we started count.

        Never gives up: a failure to start or to poll is counted, retried with a backoff and, when it
        lasts, reported as a readiness problem until a poll succeeds again.
        """
        backoff = Backoff(1.0, 10.0)
        while not stop.is_set():
            try:
                await self._read(stop)
                return
            except Exception as exc:  # whatever stops the reader is reported, then retried
                self._failed(exc)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=backoff.next())

    async def _read(self, stop: asyncio.Event) -> None:
        # Created only with kafka.create_topics; otherwise a missing topic raises TopicsMissing naming
        # it, which is retried and, when it lasts, reported on /readyz like any other stall.
        await kafka_io.ensure_topics(self._kafka, [self._kafka.control_topic])
        consumer = kafka_io.make_consumer(self._kafka, group_id=None)
        self._consumer = consumer
        await consumer.start()
        try:
            partitions = await self._partitions(consumer)
            tps = [TopicPartition(self._kafka.control_topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            while not stop.is_set():
                try:
                    batches = await consumer.getmany(timeout_ms=200)
                except KafkaError as exc:
                    self._failed(exc)
                    await asyncio.sleep(jittered(1.0))
                    continue
                self._progressed()
                for records in batches.values():
                    for record in records:
                        self._apply(record.value)
                if not self.caught_up.is_set() and await self._reached(consumer, ends):
                    self.caught_up.set()
        finally:
            await consumer.stop()

    def _failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        self._metrics.control_errors.labels(error=type(exc).__name__).inc()
        stalled_s = now - self._failing_since
        if stalled_s >= self._stall_after_s:
            problem = f"control reader stalled {stalled_s:.0f} s: {type(exc).__name__}: {exc}"
            if PROBLEM not in self._state.problems:
                log.error("control.stalled", error=repr(exc), stalled_s=round(stalled_s, 1))
            self._state.problems[PROBLEM] = problem[:500]
            self._metrics.control_stalled.set(1)
        else:
            log.warning("control.poll_failed", error=repr(exc))

    def _progressed(self) -> None:
        if self._failing_since is None:
            return
        self._failing_since = None
        if self._state.problems.pop(PROBLEM, None) is not None:
            log.info("control.recovered")
        self._metrics.control_stalled.set(0)

    @staticmethod
    async def _reached(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
        for tp, end in ends.items():
            if await consumer.position(tp) < end:
                return False
        return True

    async def _partitions(self, consumer: AIOKafkaConsumer) -> set[int]:
        for _ in range(50):
            partitions = await kafka_io.topic_partitions(consumer, self._kafka.control_topic)
            if partitions:
                return partitions
            await asyncio.sleep(0.1)
        raise RuntimeError(f"control topic {self._kafka.control_topic} has no partitions")

    def _apply(self, raw: bytes | None) -> None:
        if not raw:
            return  # a tombstone: compaction removing an old command
        try:
            command = decode_event(CancelRequested, raw)
        except InvalidEvent as exc:
            log.warning("control.invalid_command", error=exc.message)
            return
        self._registry.add(command.request_id)
        log.info("control.cancel_received", request_id=command.request_id)
