"""Cancellation: every worker reads the control topic on its own and remembers recent cancels.

The reader is not a member of the request group: each worker must see every cancel, whichever
partition the request sits on. It keeps a bounded set of recent ids (oldest forgotten first), so the
control topic can outlive any worker and never grows its memory.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from consumer import kafka as kafka_io
from consumer.settings import KafkaSettings
from schemas.control import CancelRequested

log = structlog.get_logger("klein_edit.control")


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
    def __init__(self, kafka: KafkaSettings, registry: CancelRegistry) -> None:
        self._kafka = kafka
        self._registry = registry
        self._consumer: AIOKafkaConsumer | None = None
        self.caught_up = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Read cancels until `stop`; starts at the beginning so cancels sent before we started count."""
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
                    log.warning("control.poll_failed", error=repr(exc))
                    await asyncio.sleep(1.0)
                    continue
                for records in batches.values():
                    for record in records:
                        self._apply(record.value)
                if not self.caught_up.is_set() and await self._reached(consumer, ends):
                    self.caught_up.set()
        finally:
            await consumer.stop()

    @staticmethod
    async def _reached(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
        for tp, end in ends.items():
            if await consumer.position(tp) < end:
                return False
        return True

    async def _partitions(self, consumer: AIOKafkaConsumer) -> set[int]:
        for _ in range(50):
            partitions = consumer.partitions_for_topic(self._kafka.control_topic)
            if partitions:
                return set(partitions)
            await consumer.topics()
            await asyncio.sleep(0.1)
        raise RuntimeError(f"control topic {self._kafka.control_topic} has no partitions")

    def _apply(self, raw: bytes | None) -> None:
        if not raw:
            return  # a tombstone: compaction removing an old command
        try:
            command = CancelRequested.model_validate_json(raw)
        except ValidationError as exc:
            log.warning("control.invalid_command", error=str(exc).splitlines()[0])
            return
        self._registry.add(command.request_id)
        log.info("control.cancel_received", request_id=command.request_id)
