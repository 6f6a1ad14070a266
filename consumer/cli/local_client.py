"""A small producer-side client: publish edit requests and wait for their results.

Used by `klein-edit submit`, the demo and the tests; other teams can use it as an example of the
contract (any Kafka client in any language works the same way).
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType

from aiokafka import AIOKafkaConsumer, TopicPartition

from consumer.kafka import clients as kafka_io
from consumer.kafka.codec import decode_event, encode_event
from consumer.kafka.settings import KafkaSettings
from schemas.control import CancelRequested
from schemas.requests import EditRequest
from schemas.results import EditCompleted


class EditClient:
    def __init__(self, kafka: KafkaSettings) -> None:
        self._kafka = kafka
        self._producer = kafka_io.make_producer(kafka)
        self._results: AIOKafkaConsumer | None = None
        self._received: dict[str, EditCompleted] = {}

    async def __aenter__(self) -> EditClient:
        try:
            await self._producer.start()
        except BaseException:
            await self._producer.stop()  # a producer that failed to start still holds its client
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._producer.stop()
        if self._results is not None:
            await self._results.stop()

    async def watch_results(self) -> None:
        """Start reading the result topic from its current end, so `wait_for` sees only new results."""
        await kafka_io.ensure_topics(self._kafka, [self._kafka.result_topic])
        consumer = kafka_io.make_consumer(self._kafka, group_id=None, auto_offset_reset="latest")
        await consumer.start()
        deadline = time.monotonic() + 30
        partitions = await kafka_io.topic_partitions(consumer, self._kafka.result_topic)
        while not partitions and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            partitions = await kafka_io.topic_partitions(consumer, self._kafka.result_topic)
        tps = [TopicPartition(self._kafka.result_topic, p) for p in sorted(partitions or ())]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)  # resolve the end offsets now, before the request is sent
        self._results = consumer

    async def submit(self, request: EditRequest, *, topic: str | None = None) -> None:
        await self._producer.send_and_wait(
            topic or self._kafka.request_topic, encode_event(request), key=request.request_id.encode()
        )

    async def cancel(self, command: CancelRequested) -> None:
        await self._producer.send_and_wait(
            self._kafka.control_topic, encode_event(command), key=command.request_id.encode()
        )

    async def wait_for(self, request_id: str, *, timeout_s: float) -> EditCompleted:
        """The result of `request_id`; results of other requests read meanwhile are kept for later."""
        if self._results is None:
            raise RuntimeError("call watch_results() before submit() to wait for a result")
        deadline = time.monotonic() + timeout_s
        while request_id not in self._received:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no result for {request_id} within {timeout_s:.0f} s")
            batches = await self._results.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    if record.key and record.value:
                        result = decode_event(EditCompleted, record.value, reject_misspellings=False)
                        self._received.setdefault(result.request_id, result)
        return self._received.pop(request_id)
