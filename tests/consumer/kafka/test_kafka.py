"""aiokafka client construction (`consumer.kafka.clients`): static membership of the workers' group,
read_committed, and no topic created as a side effect of a metadata request."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiokafka.admin.client
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.client import ConnectionGroup
from aiokafka.protocol.metadata import MetadataRequest_v5, MetadataResponse_v5

from consumer.kafka import clients as kafka_io
from consumer.kafka.settings import KafkaSettings


async def test_group_instance_id_reaches_only_the_workers_group_consumer() -> None:
    kafka = KafkaSettings(group_id="klein-edit", group_instance_id="klein-edit-7d9f-abcde")
    worker = kafka_io.make_consumer(kafka, kafka.request_topic, group_id=kafka.group_id)
    replay = kafka_io.make_consumer(kafka, group_id="dlq-replay")  # `dlq replay --group`
    reader = kafka_io.make_consumer(kafka, group_id=None)  # the control reader, `submit --wait`
    try:
        assert worker._group_instance_id == "klein-edit-7d9f-abcde"
        assert replay._group_instance_id is None
        assert reader._group_instance_id is None
    finally:
        for consumer in (worker, replay, reader):
            await consumer.stop()


async def test_every_consumer_reads_committed_unless_told_otherwise() -> None:
    """Records of aborted transactions are never edited, nor cancels in them applied."""
    default = kafka_io.make_consumer(KafkaSettings(), group_id="klein-edit")
    reader = kafka_io.make_consumer(KafkaSettings(), group_id=None)
    loose = kafka_io.make_consumer(KafkaSettings(isolation_level="read_uncommitted"), group_id="klein-edit")
    try:
        assert default._isolation_level == reader._isolation_level == "read_committed"
        assert loose._isolation_level == "read_uncommitted"
    finally:
        for consumer in (default, reader, loose):
            await consumer.stop()


class _RecordingConnection:
    """Stands in for a broker connection: keeps each request, answers with a cluster of no brokers."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    def connected(self) -> bool:
        return True

    async def send(self, request: Any) -> Any:
        self.requests.append(request)
        return MetadataResponse_v5(0, [], None, -1, [])


async def _metadata_request_of(client: Any) -> Any:
    """The metadata request aiokafka's own `_metadata_update` sends for topic `t`, as a v5 struct."""
    conn = _RecordingConnection()
    bootstrap = ("bootstrap", ConnectionGroup.DEFAULT)
    client._conns[bootstrap] = conn
    try:
        await client._metadata_update(client.cluster, ["t"])
    finally:
        client._conns.pop(bootstrap)
    (request,) = conn.requests
    return request.build(MetadataRequest_v5)


async def test_no_client_the_worker_opens_asks_the_broker_to_create_a_topic() -> None:
    """A deleted topic must not come back because a worker refreshed its metadata (KIP-361)."""
    kafka = KafkaSettings()
    consumer = kafka_io.make_consumer(kafka, kafka.request_topic, group_id=kafka.group_id)
    reader = kafka_io.make_consumer(kafka, group_id=None)
    producer = kafka_io.make_producer(kafka)
    try:
        for client in (consumer._client, reader._client, producer.client):
            request = await _metadata_request_of(client)
            assert request.topics == ["t"]
            assert request.allow_auto_topic_creation is False
    finally:
        await consumer.stop()
        await reader.stop()
        await producer.stop()
    assert kafka_io.forbid_topic_auto_creation() is True  # idempotent; the admin client's requests too
    admin_request = aiokafka.admin.client.MetadataRequest(["t"]).build(MetadataRequest_v5)
    assert admin_request.allow_auto_topic_creation is False


async def test_without_a_group_instance_id_members_are_dynamic() -> None:
    kafka = KafkaSettings()
    consumer = kafka_io.make_consumer(kafka, group_id=kafka.group_id)
    try:
        assert consumer._group_instance_id is None
    finally:
        await consumer.stop()


async def _poll_until(consumers: list[AIOKafkaConsumer], done: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for consumer in consumers:
            await consumer.getmany(timeout_ms=100)
        if done():
            return
    raise AssertionError("the group did not settle in time")


@pytest.mark.integration
async def test_a_static_member_that_rejoins_gets_its_partitions_back_without_a_rebalance(
    kafka_bootstrap: str,
) -> None:
    """Against the real broker: restart one of two static members; the other's generation stays."""
    tag = uuid.uuid4().hex[:8]
    topic = f"{tag}.requests"
    await kafka_io.ensure_topics(
        KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_partitions=4, create_topics=True), [topic]
    )

    def member(instance: str) -> AIOKafkaConsumer:
        kafka = KafkaSettings(
            bootstrap_servers=kafka_bootstrap,
            group_id=f"g-{tag}",
            group_instance_id=f"{tag}-{instance}",
            session_timeout_ms=10_000,
            heartbeat_interval_ms=500,
            rebalance_timeout_ms=6000,
        )
        return kafka_io.make_consumer(kafka, topic, group_id=kafka.group_id)

    a, b = member("a"), member("b")
    await a.start()
    await b.start()
    try:
        await _poll_until([a, b], lambda: len(a.assignment()) + len(b.assignment()) == 4, 40)
        generation, owned_by_a, owned_by_b = a._coordinator.generation, a.assignment(), b.assignment()
        assert owned_by_a
        assert owned_by_b

        await b.stop()  # a static member does not leave the group: nothing is reassigned
        b = member("b")
        await b.start()
        await _poll_until([a, b], lambda: bool(b.assignment()), 20)
        await asyncio.sleep(1.0)
        await a.getmany(timeout_ms=500)

        assert b.assignment() == owned_by_b
        assert a.assignment() == owned_by_a
        assert a._coordinator.generation == generation  # a was never part of a rebalance
    finally:
        await a.stop()
        await b.stop()
