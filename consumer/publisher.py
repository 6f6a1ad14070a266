"""Everything the worker writes to Kafka: results, dead letters and progress events.

Results and dead letters are sent and awaited, retrying through broker outages, because a record is
committed only after they are acknowledged. An error aiokafka marks not retriable (a record over the
size limit) is never retried: it raises `PublishRejected` at once. A topic the worker may not write
(`TopicAuthorizationFailedError`: an ACL revoked or not granted yet) is the exception: the fix is an
operator's grant, not the record's, so the send waits and retries like an outage (one
`publish.access_denied` error line per send, then warnings) and the record stays uncommitted: nothing
is lost. A DLQ
copy is bounded: a value over `max_request_bytes`, and a key over `DLQ_PREVIEW_BYTES`, are cut to
`DLQ_PREVIEW_BYTES` with headers saying so.
Progress is fire-and-forget: losing one costs nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any, Protocol

import structlog
from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaError, KafkaTimeoutError, TopicAuthorizationFailedError

from consumer.backoff import Backoff
from consumer.http.metrics import WorkerMetrics
from consumer.kafka import clients as kafka_io
from consumer.kafka.codec import encode_event
from consumer.kafka.settings import KafkaSettings
from consumer.kafka.tracing import Headers
from schemas.errors import ErrorCode, KleinEditError
from schemas.progress import EditProgressed
from schemas.results import EditCompleted

# Errors aiokafka marks not retriable that are waited out all the same: a timeout is how an outage
# shows, and a denied WRITE is fixed by an operator's grant, not by the record.
_WAITED_OUT = (KafkaTimeoutError, TopicAuthorizationFailedError)

log = structlog.get_logger("klein_edit.worker")


class Producer(Protocol):
    """The producer calls publishing needs (`aiokafka.AIOKafkaProducer` is the real one)."""

    async def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None, headers: Any = None
    ) -> asyncio.Future[Any]: ...
    async def send_and_wait(
        self, topic: str, value: bytes | None = None, key: bytes | None = None, headers: Any = None
    ) -> Any: ...


class PublishRejected(KleinEditError):
    """Kafka refused a record for good (aiokafka's `retriable` is False, e.g. MessageSizeTooLargeError)."""

    code = ErrorCode.INTERNAL
    retryable = False


class Publisher:
    def __init__(
        self,
        producer: Producer,
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

        `headers`: the request's trace context (`consumer.kafka.tracing.trace_headers`), carried unchanged.
        """
        await self.send(
            self._kafka.result_topic, encode_event(result), key=result.request_id.encode(), headers=headers
        )
        self._metrics.observe_result(result)

    async def dead_letter(
        self, record: ConsumerRecord[bytes, bytes], error: KleinEditError, attempts: int
    ) -> None:
        """Copy the record to the DLQ with headers saying where it came from and why.

        The record's own headers (traceparent, CloudEvents `ce_*`, tenant ids, ...) are kept after the
        `klein-edit.*` ones, up to `DLQ_PREVIEW_BYTES` of them (`klein-edit.headers-dropped` counts the
        rest); `klein-edit dlq replay` sends them again with the request.

        The value is copied byte for byte, unless it is over `max_request_bytes` (it can never be
        replayed then): its first `DLQ_PREVIEW_BYTES` are kept, with `klein-edit.truncated: true` and
        `klein-edit.original-size` (bytes). The key, which no request needs longer than a request id, is
        cut the same way when it is over `DLQ_PREVIEW_BYTES`, with `klein-edit.key-truncated: true`,
        `klein-edit.original-key-size` (bytes) and `klein-edit.original-key-sha256` (hex). If Kafka still
        refuses the copy, one without a value is sent; if that is refused too, the loss is logged and
        counted and the record's failed result says why.
        """
        headers = [
            (kafka_io.DLQ_ORIGINAL_TOPIC, record.topic.encode()),
            (kafka_io.DLQ_ORIGINAL_PARTITION, str(record.partition).encode()),
            (kafka_io.DLQ_ORIGINAL_OFFSET, str(record.offset).encode()),
            (kafka_io.DLQ_ERROR_CODE, error.code.value.encode()),
            (kafka_io.DLQ_ERROR_MESSAGE, error.message[:1000].encode("utf-8", "replace")),
            (kafka_io.DLQ_ATTEMPTS, str(attempts).encode()),
            *_original_headers(record.headers),
        ]
        key, key_headers = _bounded_key(record.key)
        headers += key_headers
        value, size = record.value, len(record.value or b"")
        if value is not None and size > self._kafka.max_request_bytes:
            value = value[: kafka_io.DLQ_PREVIEW_BYTES]
            headers += _truncated(size)
        try:
            try:
                await self.send(self._kafka.dlq_topic, value, key=key, headers=headers)
            except PublishRejected as exc:
                log.error("dlq.copy_rejected", error=exc.message, value_bytes=len(value or b""))
                if value is None:
                    raise
                bare = [
                    h for h in headers if h[0] not in (kafka_io.DLQ_TRUNCATED, kafka_io.DLQ_ORIGINAL_SIZE)
                ]
                await self.send(
                    self._kafka.dlq_topic,
                    None,
                    key=key,
                    headers=bare + _truncated(len(record.value or b"")),
                )
        except PublishRejected as exc:
            log.error("dlq.lost", code=error.code.value, error=exc.message)
            return
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
        """Send and wait for the ack, retrying through broker outages until acked or abandoned.

        Raises `PublishRejected` at once for an error aiokafka marks not retriable (timeouts excepted:
        they are how an outage shows; a denied WRITE too: it waits for the grant), and re-raises any
        `KafkaError` once the worker is abandoning.
        """
        backoff = Backoff(0.5, 10.0)
        denied = False
        while True:
            try:
                await self._producer.send_and_wait(topic, value=value, key=key, headers=headers)
                if denied:
                    log.info("publish.access_restored", topic=topic)
                return
            except KafkaError as exc:
                if self._abandon.is_set():
                    raise
                if not exc.retriable and not isinstance(exc, _WAITED_OUT):
                    self._metrics.publish_rejected.labels(topic=topic, error=type(exc).__name__).inc()
                    raise PublishRejected(f"{topic} refused the record: {type(exc).__name__}: {exc}") from exc
                delay = backoff.next()
                if isinstance(exc, TopicAuthorizationFailedError):
                    (log.warning if denied else log.error)(
                        "publish.access_denied",
                        topic=topic,
                        error=f"WRITE on topic {topic} is denied (a Kafka ACL); the record waits, "
                        "uncommitted, until it is granted (docs/operations.md, Kafka ACLs)",
                        retry_in_s=round(delay, 2),
                    )
                    denied = True
                else:
                    log.warning("publish.retrying", topic=topic, error=repr(exc), retry_in_s=round(delay, 2))
                await asyncio.sleep(delay)


def _original_headers(headers: Any) -> list[tuple[str, bytes]]:
    """The record's headers but the ones the worker sets on a DLQ copy, bounded in total size."""
    kept: list[tuple[str, bytes]] = []
    budget, dropped = kafka_io.DLQ_PREVIEW_BYTES, 0
    for key, value in headers or ():
        if key in kafka_io.DLQ_HEADERS or value is None:
            continue
        size = len(key) + len(value)
        if size > budget:
            dropped += 1
            continue
        budget -= size
        kept.append((key, bytes(value)))
    if dropped:
        kept.append((kafka_io.DLQ_HEADERS_DROPPED, str(dropped).encode()))
    return kept


def _bounded_key(key: bytes | None) -> tuple[bytes | None, list[tuple[str, bytes]]]:
    """The key for a DLQ copy, cut to `DLQ_PREVIEW_BYTES`, and the headers that say so when it was."""
    if key is None or len(key) <= kafka_io.DLQ_PREVIEW_BYTES:
        return key, []
    return key[: kafka_io.DLQ_PREVIEW_BYTES], [
        (kafka_io.DLQ_KEY_TRUNCATED, b"true"),
        (kafka_io.DLQ_ORIGINAL_KEY_SIZE, str(len(key)).encode()),
        (kafka_io.DLQ_ORIGINAL_KEY_SHA256, hashlib.sha256(key).hexdigest().encode()),
    ]


def _truncated(size: int) -> list[tuple[str, bytes]]:
    return [(kafka_io.DLQ_TRUNCATED, b"true"), (kafka_io.DLQ_ORIGINAL_SIZE, str(size).encode())]


def _ignore_result(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.debug("progress.send_failed", error=repr(future.exception()))
