"""aiokafka client construction from `KafkaSettings`, and the dead-letter record format."""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any

import aiokafka.admin.client
import aiokafka.client
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, codec
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.metadata import MetadataRequest

from consumer.kafka.auth import answer_oauthbearer_error_challenges, token_provider
from consumer.kafka.settings import KafkaSettings

# Headers of a dead-lettered record: where it came from and why it was given up on.
DLQ_ORIGINAL_TOPIC = "klein-edit.original-topic"
DLQ_ORIGINAL_PARTITION = "klein-edit.original-partition"
DLQ_ORIGINAL_OFFSET = "klein-edit.original-offset"
DLQ_ERROR_CODE = "klein-edit.error-code"
DLQ_ERROR_MESSAGE = "klein-edit.error-message"
DLQ_ATTEMPTS = "klein-edit.attempts"
# Set on a DLQ copy whose value was cut to `DLQ_PREVIEW_BYTES` (the record was over max_request_bytes).
DLQ_TRUNCATED = "klein-edit.truncated"
DLQ_ORIGINAL_SIZE = "klein-edit.original-size"
DLQ_PREVIEW_BYTES = 65_536
# Set on a DLQ copy whose key was over `DLQ_PREVIEW_BYTES` and cut to that: the original key's length
# (bytes) and SHA-256 (hex), so the copy can still be matched with the record it came from.
DLQ_KEY_TRUNCATED = "klein-edit.key-truncated"
DLQ_ORIGINAL_KEY_SIZE = "klein-edit.original-key-size"
DLQ_ORIGINAL_KEY_SHA256 = "klein-edit.original-key-sha256"
# Set when the original headers (kept on the copy) were over `DLQ_PREVIEW_BYTES`: how many were left out.
DLQ_HEADERS_DROPPED = "klein-edit.headers-dropped"
# Every header the worker sets on a DLQ copy; the record's other headers are its producer's, kept.
DLQ_HEADERS = frozenset(
    {
        DLQ_ORIGINAL_TOPIC,
        DLQ_ORIGINAL_PARTITION,
        DLQ_ORIGINAL_OFFSET,
        DLQ_ERROR_CODE,
        DLQ_ERROR_MESSAGE,
        DLQ_ATTEMPTS,
        DLQ_TRUNCATED,
        DLQ_ORIGINAL_SIZE,
        DLQ_KEY_TRUNCATED,
        DLQ_ORIGINAL_KEY_SIZE,
        DLQ_ORIGINAL_KEY_SHA256,
        DLQ_HEADERS_DROPPED,
    }
)


# Every record-batch codec Kafka defines, and how aiokafka tells whether it can decode it.
CODECS = {"gzip": codec.has_gzip, "snappy": codec.has_snappy, "lz4": codec.has_lz4, "zstd": codec.has_zstd}


def require_codecs() -> None:
    """Raise `RuntimeError` naming the codecs aiokafka cannot decode in this install (cramjam missing).

    A worker that cannot decode a batch cannot move past it: better to refuse to start than to crash
    on the first lz4 batch and hand the partition to the next member, which crashes too.
    """
    missing = [name for name, available in CODECS.items() if not available()]
    if missing:
        raise RuntimeError(
            f"aiokafka cannot decode {', '.join(missing)} batches here: install klein-edit's dependencies "
            "(cramjam) so every codec a producer may use is decoded"
        )


def client_kwargs(kafka: KafkaSettings) -> dict[str, Any]:
    """Connection and security options shared by every client we create.

    With OAUTHBEARER each client gets its own token provider (`consumer.kafka.auth.token_provider`), and a
    refused token fails as an authentication error (`auth.answer_oauthbearer_error_challenges`).
    """
    kwargs: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": kafka.client_id,
        "security_protocol": kafka.security_protocol,
        "request_timeout_ms": kafka.request_timeout_ms,
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = create_ssl_context(
            cafile=kafka.ssl_cafile, certfile=kafka.ssl_certfile, keyfile=kafka.ssl_keyfile
        )
    if kafka.security_protocol.startswith("SASL") and kafka.sasl_mechanism == "OAUTHBEARER":
        answer_oauthbearer_error_challenges()
        kwargs["sasl_mechanism"] = "OAUTHBEARER"
        kwargs["sasl_oauth_token_provider"] = token_provider(kafka)
    elif kafka.security_protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = kafka.sasl_mechanism or "PLAIN"
        kwargs["sasl_plain_username"] = kafka.sasl_username
        kwargs["sasl_plain_password"] = (
            kafka.sasl_password.get_secret_value() if kafka.sasl_password is not None else None
        )
    return kwargs


def forbid_topic_auto_creation() -> bool:
    """Make every aiokafka client in this process ask the broker never to create a topic it names in a
    metadata request (Kafka's `allow.auto.create.topics=false`, KIP-361); True when that took effect.

    A broker with `auto.create.topics.enable=true` (Apache Kafka's default) creates any topic a
    metadata request names, with its default partitions and configs; a topic an operator deleted comes
    back as soon as a worker refreshes its metadata. Topics are provisioned by operators, or created
    by `ensure_topics` with the partitions and configs klein-edit needs, never by a side effect.

    aiokafka (0.14) has no option for it: `AIOKafkaClient` and `AIOKafkaAdminClient` build their
    `MetadataRequest(topics)` without `allow_auto_topic_creation`, which then defaults to True from
    v4 on. The name they build it with is replaced by one that passes False. False (nothing changed)
    on an aiokafka whose `MetadataRequest` takes no such argument; `test_kafka.py` pins the seam.
    """
    try:
        parameters = inspect.signature(MetadataRequest).parameters
    except (TypeError, ValueError):  # not a class: an older protocol layer (kafka-python's lists)
        return False
    if "allow_auto_topic_creation" not in parameters:
        return False
    request = functools.partial(MetadataRequest, allow_auto_topic_creation=False)
    for module in (aiokafka.client, aiokafka.admin.client):
        if getattr(module, "MetadataRequest", None) is MetadataRequest:
            module.MetadataRequest = request
    return True


def make_producer(kafka: KafkaSettings) -> AIOKafkaProducer:
    forbid_topic_auto_creation()
    return AIOKafkaProducer(
        **client_kwargs(kafka),
        acks="all",
        enable_idempotence=kafka.enable_idempotence,
        linger_ms=2,
        max_request_size=max(kafka.max_request_bytes, 1_048_576) * 2,
    )


def make_consumer(
    kafka: KafkaSettings, *topics: str, group_id: str | None, **overrides: Any
) -> AIOKafkaConsumer:
    """A consumer without auto-commit. In the workers' own group (`kafka.group_id`) it is a static
    member when `kafka.group_instance_id` is set; readers of other groups (`dlq replay --group`) or
    of none (the control reader, `submit --wait`) never are. Neither asks the broker to create a topic
    (`forbid_topic_auto_creation`)."""
    forbid_topic_auto_creation()
    options: dict[str, Any] = {
        "group_id": group_id,
        "group_instance_id": kafka.group_instance_id if group_id == kafka.group_id else None,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": kafka.isolation_level,
        "session_timeout_ms": kafka.session_timeout_ms,
        "heartbeat_interval_ms": kafka.heartbeat_interval_ms,
        "max_poll_interval_ms": kafka.max_poll_interval_ms,
        "rebalance_timeout_ms": kafka.rebalance_timeout_ms,
        "fetch_max_bytes": max(kafka.max_request_bytes * 4, 4 * 1_048_576),
        "max_partition_fetch_bytes": max(kafka.max_request_bytes * 2, 1_048_576),
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **client_kwargs(kafka), **options)


def header(headers: Any, name: str) -> str | None:
    for key, value in headers or ():
        if key == name and value is not None:
            return bytes(value).decode("utf-8", "replace")
    return None


class TopicsMissing(Exception):
    """Topics klein-edit needs do not exist and `kafka.create_topics` is off."""


def topic_configs(kafka: KafkaSettings, topic: str) -> dict[str, str]:
    """Topic-level configs for a topic klein-edit creates: the control topic is compacted and expires
    (`compact,delete`: a cancel is keyed by request id, so compaction keeps the latest command per
    request and retention drops old ones); every other topic uses the broker's defaults (delete)."""
    return {"cleanup.policy": "compact,delete"} if topic == kafka.control_topic else {}


async def ensure_topics(kafka: KafkaSettings, topics: list[str]) -> None:
    """Make sure `topics` exist: create the missing ones when `kafka.create_topics` is on (demo,
    tests), else raise `TopicsMissing` naming them (production topics are provisioned by operators)."""
    forbid_topic_auto_creation()
    admin = AIOKafkaAdminClient(**client_kwargs(kafka))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in dict.fromkeys(topics) if t not in existing]
        if missing and not kafka.create_topics:
            raise TopicsMissing(
                f"Kafka topic(s) {', '.join(missing)} do not exist at {kafka.bootstrap_servers}: create them "
                "(docs/operations.md, Topics) or set KLEIN_EDIT_KAFKA__CREATE_TOPICS=true (development only)"
            )
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # created concurrently by another client
                await admin.create_topics(
                    [
                        NewTopic(
                            t,
                            num_partitions=kafka.topic_partitions,
                            replication_factor=kafka.topic_replication_factor,
                            topic_configs=topic_configs(kafka, t),
                        )
                        for t in missing
                    ]
                )
    finally:
        await admin.close()


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    """The partitions of `topic` in a fresh read of the cluster's metadata (empty: it does not exist).

    `consumer.partitions_for_topic` knows only the topics the consumer tracks, and `consumer.topics()`
    does not add to them: on Apache Kafka a topic it merely listed stays unknown to it (Tansu answers
    every metadata request with every topic, which hid this).
    """
    cluster = await consumer._client.fetch_all_metadata()
    return set(cluster.partitions_for_topic(topic) or ())
