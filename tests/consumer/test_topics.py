"""Topics: klein-edit creates them only when `kafka.create_topics` says so (real broker)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from consumer.app import build_worker
from consumer.control import CancelRegistry, ControlReader
from consumer.http.readiness import WorkerState
from consumer.kafka import clients as kafka_io
from consumer.kafka.settings import KafkaSettings
from consumer.settings import Settings
from pipeline import StandInEditor
from schemas.control import CancelRequested
from schemas.results import EditStatus
from storage import ImageStore
from tests.consumer.harness import (
    integration_settings,
    png_bytes,
    prepare,
    publish,
    request,
    results,
    running_worker,
    stage_image,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def kafka_settings(bootstrap: str, *, create: bool) -> KafkaSettings:
    kafka = integration_settings(bootstrap, "http://127.0.0.1:9").kafka  # S3 is not used here
    return kafka.model_copy(update={"create_topics": create})


async def topics_and_configs(kafka: KafkaSettings, topic: str) -> tuple[set[str], dict[str, str]]:
    admin = AIOKafkaAdminClient(**kafka_io.client_kwargs(kafka))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        if topic not in existing:
            return existing, {}
        (response,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        entries = response.resources[0][4]
        return existing, {entry[0]: entry[1] for entry in entries}
    finally:
        await admin.close()


async def test_missing_topics_are_named_not_created_by_default(kafka_bootstrap: str) -> None:
    kafka = kafka_settings(kafka_bootstrap, create=False)
    assert KafkaSettings().create_topics is False  # the default on a real cluster
    with pytest.raises(kafka_io.TopicsMissing, match=rf"{kafka.control_topic}.*CREATE_TOPICS"):
        await kafka_io.ensure_topics(kafka, [kafka.result_topic, kafka.control_topic])
    existing, _ = await topics_and_configs(kafka, kafka.control_topic)
    assert kafka.control_topic not in existing
    assert kafka.result_topic not in existing


async def test_created_when_asked_with_a_compacted_control_topic(kafka_bootstrap: str) -> None:
    kafka = kafka_settings(kafka_bootstrap, create=True)
    await kafka_io.ensure_topics(kafka, [kafka.result_topic, kafka.control_topic])
    existing, control = await topics_and_configs(kafka, kafka.control_topic)
    assert {kafka.result_topic, kafka.control_topic} <= existing
    assert control.get("cleanup.policy") == "compact,delete"
    _, results = await topics_and_configs(kafka, kafka.result_topic)
    assert results.get("cleanup.policy", "delete") == "delete"


async def test_the_control_reader_waits_for_its_topic_instead_of_creating_it(kafka_bootstrap: str) -> None:
    kafka = kafka_settings(kafka_bootstrap, create=False)
    registry = CancelRegistry(10)
    state = WorkerState()
    reader = ControlReader(kafka, registry, state=state, stall_after_s=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(reader.run(stop))
    try:
        deadline = time.monotonic() + 15
        while not state.problems:
            assert time.monotonic() < deadline, "a missing control topic was never reported"
            await asyncio.sleep(0.1)
        (problem,) = state.problems.values()
        assert kafka.control_topic in problem  # /readyz names the missing topic
        existing, _ = await topics_and_configs(kafka, kafka.control_topic)
        assert kafka.control_topic not in existing
        assert not task.done()  # still retrying, not crashed

        # The operator provisions it; the reader finds it on its next (jittered, <= 10 s) try.
        await kafka_io.ensure_topics(kafka.model_copy(update={"create_topics": True}), [kafka.control_topic])
        producer = kafka_io.make_producer(kafka)
        await producer.start()
        try:
            command = CancelRequested(request_id="r-1")
            await producer.send_and_wait(kafka.control_topic, command.model_dump_json().encode(), key=b"r-1")
        finally:
            await producer.stop()
        deadline = time.monotonic() + 25
        while "r-1" not in registry or state.problems:
            assert time.monotonic() < deadline, "the cancel was never read"
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_a_worker_names_missing_request_topics_on_readyz_instead_of_idling(
    kafka_bootstrap: str, s3_endpoint: str, kafka_is_apache_kafka: bool
) -> None:
    settings = integration_settings(kafka_bootstrap, s3_endpoint, kafka={"create_topics": False})
    store = ImageStore(settings.s3)
    for bucket in (settings.s3.input_bucket, settings.s3.output_bucket):
        store.ensure_bucket(bucket)
    worker = build_worker(settings, editor_factory=lambda: StandInEditor(edit_ms=1))
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    kafka = settings.kafka
    try:
        deadline = time.monotonic() + 40
        while "topics" not in worker.state.problems:
            assert time.monotonic() < deadline, worker.state.problems
            assert not task.done()
            await asyncio.sleep(0.1)
        assert kafka.result_topic in worker.state.problems["topics"]
        assert kafka.dlq_topic in worker.state.problems["topics"]
        assert not worker.state.ready
        existing, _ = await topics_and_configs(kafka, kafka.result_topic)
        assert kafka.result_topic not in existing  # named, not created
        if kafka_is_apache_kafka:
            # Apache Kafka (auto.create.topics.enable=true, as in the tests and by default) honours the
            # worker's allow_auto_topic_creation=false, so the subscribed request topic is not created
            # either. Tansu creates a topic a consumer subscribes to whatever the request says.
            assert kafka.request_topic in worker.state.problems["topics"]
            existing, _ = await topics_and_configs(kafka, kafka.request_topic)
            assert kafka.request_topic not in existing

        # The operator creates them; the worker notices without a restart.
        create = kafka.model_copy(update={"create_topics": True})
        await kafka_io.ensure_topics(create, [kafka.request_topic, kafka.result_topic, kafka.dlq_topic])
        deadline = time.monotonic() + 20
        while "topics" in worker.state.problems:
            assert time.monotonic() < deadline, worker.state.problems
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def wait_until(condition: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f} s for {what}")
        await asyncio.sleep(0.2)


async def test_a_request_topic_deleted_and_recreated_is_consumed_again(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    store = await prepare(settings)
    image = stage_image(store, settings, "a.png", png_bytes(64, 64))
    kafka = settings.kafka
    admin = AIOKafkaAdminClient(**kafka_io.client_kwargs(kafka))
    await admin.start()
    try:
        async with running_worker(settings, lambda: StandInEditor(edit_ms=0)) as worker:
            await admin.delete_topics([kafka.request_topic])
            await wait_until(
                lambda: "topics" in worker.state.problems, timeout_s=40, what="the missing topic"
            )
            assert kafka.request_topic in worker.state.problems["topics"]
            assert not worker.state.ready

            await kafka_io.ensure_topics(kafka, [kafka.request_topic])
            await wait_until(lambda: worker.state.ready, timeout_s=60, what="ready again")
            req = request(settings, image)
            await publish(settings, req)
            (event,) = await results(settings, count=1, timeout_s=60)
    finally:
        await admin.close()
    assert event.request_id == req.request_id
    assert event.status is EditStatus.SUCCEEDED
