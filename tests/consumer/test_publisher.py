"""Publisher: errors Kafka marks not retriable are never retried; DLQ copies are bounded."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
    TopicAuthorizationFailedError,
)
from structlog.testing import capture_logs

from consumer.http.metrics import WorkerMetrics
from consumer.kafka import clients as kafka_io
from consumer.kafka.settings import KafkaSettings
from consumer.publisher import Publisher, PublishRejected
from schemas.errors import InvalidEvent


class FakeProducer:
    """Answers each `send_and_wait` with the next outcome (an exception to raise, or None: acked)."""

    def __init__(self, *outcomes: KafkaError | None) -> None:
        self.outcomes = list(outcomes)
        self.sent: list[dict[str, Any]] = []

    async def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None, headers: Any = None
    ) -> Any:
        raise NotImplementedError

    async def send_and_wait(
        self, topic: str, value: bytes | None = None, key: bytes | None = None, headers: Any = None
    ) -> None:
        self.sent.append({"topic": topic, "value": value, "key": key, "headers": dict(headers or [])})
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is not None:
            raise outcome


def publisher(producer: FakeProducer, **kafka: Any) -> tuple[Publisher, WorkerMetrics]:
    metrics = WorkerMetrics()
    settings = KafkaSettings(dlq_topic="dlq", **kafka)
    return Publisher(producer, settings, metrics, abandon=asyncio.Event()), metrics


def record(
    value: bytes | None, headers: list[tuple[str, bytes]] | None = None, key: bytes | None = b"k"
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="requests",
        partition=1,
        offset=7,
        timestamp=0,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key or b""),
        serialized_value_size=len(value or b""),
        headers=headers or [],
    )


async def test_a_non_retriable_error_is_raised_at_once_and_counted() -> None:
    producer = FakeProducer(MessageSizeTooLargeError("too big"))
    pub, metrics = publisher(producer)
    with pytest.raises(PublishRejected, match="MessageSizeTooLargeError"):
        await pub.send("results", b"x", key=None)
    assert len(producer.sent) == 1
    assert (
        metrics.publish_rejected.labels(topic="results", error="MessageSizeTooLargeError")._value.get() == 1
    )


async def test_a_retriable_error_is_retried_until_acked() -> None:
    producer = FakeProducer(KafkaConnectionError("down"), None)
    pub, _ = publisher(producer)
    await pub.send("results", b"x", key=None)
    assert len(producer.sent) == 2


async def test_a_dlq_copy_within_the_limit_is_byte_for_byte() -> None:
    producer = FakeProducer()
    pub, metrics = publisher(producer, max_request_bytes=4096)
    await pub.dead_letter(record(b"x" * 4096), InvalidEvent("bad"), 1)
    (sent,) = producer.sent
    assert sent["value"] == b"x" * 4096
    assert kafka_io.DLQ_TRUNCATED not in sent["headers"]
    assert metrics.dead_lettered.labels(code="INVALID_EVENT")._value.get() == 1


async def test_an_oversize_record_gets_a_truncated_dlq_copy_saying_so() -> None:
    producer = FakeProducer()
    pub, _ = publisher(producer, max_request_bytes=1_048_576)
    size = 2_621_440  # 2.5 MiB
    await pub.dead_letter(record(b"{" + b" " * (size - 1)), InvalidEvent("too big"), 1)
    (sent,) = producer.sent
    assert len(sent["value"]) == kafka_io.DLQ_PREVIEW_BYTES
    assert sent["headers"][kafka_io.DLQ_TRUNCATED] == b"true"
    assert sent["headers"][kafka_io.DLQ_ORIGINAL_SIZE] == str(size).encode()
    assert sent["headers"][kafka_io.DLQ_ERROR_CODE] == b"INVALID_EVENT"


async def test_a_refused_dlq_copy_falls_back_to_one_without_a_value() -> None:
    producer = FakeProducer(MessageSizeTooLargeError("broker limit"), None)
    pub, metrics = publisher(producer, max_request_bytes=4096)
    await pub.dead_letter(record(b"y" * 4000), InvalidEvent("bad"), 2)
    first, second = producer.sent
    assert first["value"] == b"y" * 4000
    assert second["value"] is None
    assert second["headers"][kafka_io.DLQ_ORIGINAL_SIZE] == b"4000"
    assert second["headers"][kafka_io.DLQ_ORIGINAL_OFFSET] == b"7"
    assert metrics.dead_lettered.labels(code="INVALID_EVENT")._value.get() == 1


async def test_a_dlq_copy_refused_twice_is_logged_not_retried() -> None:
    producer = FakeProducer(MessageSizeTooLargeError("a"), MessageSizeTooLargeError("b"))
    pub, metrics = publisher(producer)
    await pub.dead_letter(record(b"z"), InvalidEvent("bad"), 1)  # returns: the failed result says why
    assert len(producer.sent) == 2
    assert metrics.dead_lettered.labels(code="INVALID_EVENT")._value.get() == 0


async def test_an_oversize_key_is_cut_keeping_its_length_and_hash() -> None:
    """A 5 MB key on an undecodable value: the copy must still fit what the broker accepts."""
    producer = FakeProducer()
    pub, metrics = publisher(producer, max_request_bytes=1_048_576)
    key = b"k" * 5_000_000
    await pub.dead_letter(record(b"\xff not json", key=key), InvalidEvent("not JSON"), 1)
    (sent,) = producer.sent
    assert sent["key"] == key[: kafka_io.DLQ_PREVIEW_BYTES]
    assert sent["value"] == b"\xff not json"
    assert sent["headers"][kafka_io.DLQ_KEY_TRUNCATED] == b"true"
    assert sent["headers"][kafka_io.DLQ_ORIGINAL_KEY_SIZE] == b"5000000"
    assert sent["headers"][kafka_io.DLQ_ORIGINAL_KEY_SHA256] == hashlib.sha256(key).hexdigest().encode()
    assert kafka_io.DLQ_TRUNCATED not in sent["headers"]  # the value was whole
    assert metrics.dead_lettered.labels(code="INVALID_EVENT")._value.get() == 1


async def test_the_fallback_copy_without_a_value_keeps_the_bounded_key() -> None:
    producer = FakeProducer(MessageSizeTooLargeError("broker limit"), None)
    pub, _ = publisher(producer, max_request_bytes=4096)
    key = b"q" * (kafka_io.DLQ_PREVIEW_BYTES + 1)
    await pub.dead_letter(record(b"y" * 4000, key=key), InvalidEvent("bad"), 1)
    first, second = producer.sent
    assert len(first["key"]) == len(second["key"]) == kafka_io.DLQ_PREVIEW_BYTES
    assert second["value"] is None
    assert second["headers"][kafka_io.DLQ_ORIGINAL_KEY_SIZE] == str(len(key)).encode()


@pytest.mark.parametrize("key", [None, b"", b"req-1", b"k" * kafka_io.DLQ_PREVIEW_BYTES])
async def test_a_key_within_the_bound_is_copied_as_it_is(key: bytes | None) -> None:
    producer = FakeProducer()
    pub, _ = publisher(producer)
    await pub.dead_letter(record(b"x", key=key), InvalidEvent("bad"), 1)
    (sent,) = producer.sent
    assert sent["key"] == key
    assert kafka_io.DLQ_KEY_TRUNCATED not in sent["headers"]
    assert kafka_io.DLQ_ORIGINAL_KEY_SHA256 not in sent["headers"]


async def test_a_producer_header_named_like_a_key_header_is_not_copied() -> None:
    producer = FakeProducer()
    pub, _ = publisher(producer)
    forged = [(kafka_io.DLQ_ORIGINAL_KEY_SHA256, b"forged"), ("traceparent", b"00-x")]
    await pub.dead_letter(record(b"x", headers=forged), InvalidEvent("bad"), 1)
    (sent,) = producer.sent
    assert kafka_io.DLQ_ORIGINAL_KEY_SHA256 not in sent["headers"]
    assert sent["headers"]["traceparent"] == b"00-x"


async def test_a_denied_write_waits_for_the_grant_and_is_never_dropped() -> None:
    """An ACL that denies WRITE on the result topic is aiokafka's not-retriable
    TopicAuthorizationFailedError, but the fix is a grant, not the record: the send waits and retries,
    so the record is never committed without its result."""
    producer = FakeProducer(TopicAuthorizationFailedError({"results"}), TopicAuthorizationFailedError(), None)
    pub, metrics = publisher(producer)
    with capture_logs() as logs:
        await pub.send("results", b"x", key=None)
    assert len(producer.sent) == 3
    assert [entry["event"] for entry in logs] == [
        "publish.access_denied",
        "publish.access_denied",
        "publish.access_restored",
    ]
    assert logs[0]["log_level"] == "error"
    assert "WRITE on topic results is denied" in logs[0]["error"]
    assert logs[1]["log_level"] == "warning"
    assert (
        metrics.publish_rejected.labels(topic="results", error="TopicAuthorizationFailedError")._value.get()
        == 0
    )


async def test_a_denied_write_gives_up_only_when_the_worker_abandons() -> None:
    producer = FakeProducer(*[TopicAuthorizationFailedError()] * 3)
    pub, _ = publisher(producer)
    task = asyncio.create_task(pub.send("results", b"x", key=None))
    await asyncio.sleep(0.1)
    assert not task.done()
    pub._abandon.set()
    with pytest.raises(TopicAuthorizationFailedError):
        await task
