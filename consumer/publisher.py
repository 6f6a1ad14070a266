"""Everything the worker writes to Kafka: results, dead letters and progress events.

Results and dead letters are sent and awaited, retrying through broker outages, because a record is
committed only after they are acknowledged. Progress is fire-and-forget: losing one costs nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import KafkaError

from consumer import kafka as kafka_io
from consumer.codec import encode_event
from consumer.metrics import WorkerMetrics
from consumer.settings import KafkaSettings
from consumer.tracing import Headers, trace_headers
from schemas.errors import KleinEditError
from schemas.progress import EditProgressed
from schemas.results import EditCompleted

log = structlog.get_logger("klein_edit.worker")


class Publisher:
    def __init__(
        self,
        producer: AIOKafkaProducer,
        kafka: KafkaSettings,
        metrics: WorkerMetrics,
        *,
        abandon: asyncio.Event,
    ) -> None:
        self._producer = producer
        self._kafka = kafka
        self._metrics = metrics
        self._abandon = abandon

    async def publish_result(self, result: EditCompleted, *, headers: Headers | None = None) -> None:
        """Send the result event (keyed by request id) and wait for the broker's ack.

        `headers`: the request's trace context (`consumer.tracing.trace_headers`), carried unchanged.
        """
        await self.send(
            self._kafka.result_topic, encode_event(result), key=result.request_id.encode(), headers=headers
        )
        self._metrics.observe_result(result)

    async def dead_letter(
        self, record: ConsumerRecord[bytes, bytes], error: KleinEditError, attempts: int
    ) -> None:
        """Copy the raw record to the DLQ with headers saying where it came from and why."""
        headers = [
            (kafka_io.DLQ_ORIGINAL_TOPIC, record.topic.encode()),
            (kafka_io.DLQ_ORIGINAL_PARTITION, str(record.partition).encode()),
            (kafka_io.DLQ_ORIGINAL_OFFSET, str(record.offset).encode()),
            (kafka_io.DLQ_ERROR_CODE, error.code.value.encode()),
            (kafka_io.DLQ_ERROR_MESSAGE, error.message[:1000].encode("utf-8", "replace")),
            (kafka_io.DLQ_ATTEMPTS, str(attempts).encode()),
            *trace_headers(record.headers),
        ]
        await self.send(self._kafka.dlq_topic, record.value, key=record.key, headers=headers)
        self._metrics.dead_lettered.labels(code=error.code.value).inc()
        log.warning("edit.dead_lettered", code=error.code.value, error=error.message, attempts=attempts)

    def emit_progress(self, event: EditProgressed, *, headers: Headers | None = None) -> None:
        """Fire and forget: the producer batches it; a failure costs one progress event, nothing more."""
        send = self._producer.send(
            self._kafka.progress_topic, encode_event(event), key=event.request_id.encode(), headers=headers
        )
        asyncio.ensure_future(send).add_done_callback(_ignore_result)

    async def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Send and wait for the ack, retrying through broker outages until acked or abandoned."""
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


def _ignore_result(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.debug("progress.send_failed", error=repr(future.exception()))
