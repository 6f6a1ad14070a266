"""Shared helpers for the consumer's integration tests: isolated settings, publishing, reading back.

Each test gets its own topics, consumer group and buckets (a random tag), so tests never see each
other's records or objects on the shared broker and S3 server.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from PIL import Image
from pydantic import SecretStr

from consumer import kafka as kafka_io
from consumer.app import build_worker
from consumer.codec import encode_event
from consumer.settings import KafkaSettings, Settings, WorkerSettings
from pipeline import Editor
from pipeline.config import TINY_RANDOM, PipelineSettings
from schemas.requests import EditRequest
from schemas.results import EditCompleted
from storage import ImageStore, S3Location, S3Settings


def integration_settings(kafka_bootstrap: str, s3_endpoint: str, **sections: dict[str, Any]) -> Settings:
    tag = uuid.uuid4().hex[:10]
    kafka: dict[str, Any] = {
        "bootstrap_servers": kafka_bootstrap,
        "group_id": f"g-{tag}",
        "request_topic": f"{tag}.requests",
        "result_topic": f"{tag}.results",
        "dlq_topic": f"{tag}.dlq",
        "progress_topic": f"{tag}.progress",
        "control_topic": f"{tag}.control",
        "session_timeout_ms": 6000,
        "heartbeat_interval_ms": 500,
        "rebalance_timeout_ms": 6000,
        "topic_partitions": 2,
    }
    s3: dict[str, Any] = {
        "endpoint_url": s3_endpoint,
        "access_key_id": SecretStr("testing"),
        "secret_access_key": SecretStr("testing"),
        "input_bucket": f"in-{tag}",
        "output_bucket": f"out-{tag}",
        "connect_timeout_s": 1.0,
        "read_timeout_s": 3.0,
        "max_attempts": 1,
    }
    pipeline: dict[str, Any] = {"model": TINY_RANDOM, "device": "cpu", "warmup": False}
    worker: dict[str, Any] = {"name": f"w-{tag}", "http_port": None, "retry_backoff_s": 0.2, "drain_grace_s": 20}
    kafka.update(sections.get("kafka", {}))
    s3.update(sections.get("s3", {}))
    pipeline.update(sections.get("pipeline", {}))
    worker.update(sections.get("worker", {}))
    return Settings(
        kafka=KafkaSettings(**kafka),
        s3=S3Settings(**s3),
        pipeline=PipelineSettings(**pipeline),
        worker=WorkerSettings(**worker),
        **{k: v for k, v in sections.items() if k not in ("kafka", "s3", "pipeline", "worker")},
    )


async def prepare(settings: Settings) -> ImageStore:
    """Create the buckets and topics of these settings; returns a store for staging inputs."""
    store = ImageStore(settings.s3)
    store.ensure_bucket(settings.s3.input_bucket)
    store.ensure_bucket(settings.s3.output_bucket)
    k = settings.kafka
    await kafka_io.ensure_topics(k, [*k.request_topics, k.result_topic, k.dlq_topic])
    return store


def png_bytes(width: int, height: int, color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


def stage_image(store: ImageStore, settings: Settings, key: str, data: bytes) -> str:
    location = S3Location(settings.s3.input_bucket, key)
    store.put_object(location, data, content_type="image/png")
    return location.uri


async def publish(
    settings: Settings,
    value: bytes | EditRequest | None,
    *,
    key: bytes | None = None,
    topic: str | None = None,
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    producer = kafka_io.make_producer(settings.kafka)
    await producer.start()
    try:
        if isinstance(value, EditRequest):
            key = key or value.request_id.encode()
            value = encode_event(value)
        await producer.send_and_wait(topic or settings.kafka.request_topic, value=value, key=key, headers=headers)
    finally:
        await producer.stop()


async def read_topic(
    settings: Settings, topic: str, *, count: int, timeout_s: float = 60.0, settle_s: float = 0.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """All records of `topic` from the beginning, once at least `count` arrived (then `settle_s` more)."""
    consumer = kafka_io.make_consumer(settings.kafka, topic, group_id=None)
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + timeout_s
        settle_until: float | None = None
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for batch in batches.values():
                records.extend(batch)
            if len(records) >= count:
                settle_until = settle_until or time.monotonic() + settle_s
                if time.monotonic() >= settle_until:
                    break
    finally:
        await consumer.stop()
    return records


async def results(settings: Settings, *, count: int, timeout_s: float = 60.0, settle_s: float = 0.0) -> list[EditCompleted]:
    records = await read_topic(settings, settings.kafka.result_topic, count=count, timeout_s=timeout_s, settle_s=settle_s)
    return [EditCompleted.model_validate_json(r.value) for r in records if r.value]


async def lag(settings: Settings, topics: list[str] | None = None) -> dict[str, int]:
    """End offset minus the group's committed offset, per partition (0 everywhere = nothing lost)."""
    k = settings.kafka
    consumer = kafka_io.make_consumer(k, group_id=k.group_id)
    await consumer.start()
    try:
        out: dict[str, int] = {}
        for topic in topics or k.request_topics:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                await consumer.topics()
                partitions = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            ends = await consumer.end_offsets(tps)
            for tp in tps:
                committed = await consumer.committed(tp) or 0
                out[f"{tp.topic}-{tp.partition}"] = ends[tp] - committed
        return out
    finally:
        await consumer.stop()


async def wait_for_no_lag(settings: Settings, timeout_s: float = 30.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    current = await lag(settings)
    while any(current.values()) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        current = await lag(settings)
    return current


def output_objects(store: ImageStore, settings: Settings) -> dict[str, bytes]:
    """Every object under the output prefix (the attempt ledger's state objects are excluded)."""
    client = store.client
    bucket = settings.s3.output_bucket
    objects: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=settings.s3.output_prefix):
        for item in page.get("Contents", []):
            objects[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return objects


@asynccontextmanager
async def running_worker(
    settings: Settings, editor_factory: Callable[[], Editor], *, join_timeout_s: float = 60.0
) -> AsyncIterator[Any]:
    """An in-process `EditWorker` that has joined its group; drained and stopped on exit."""
    worker = build_worker(settings, editor_factory=editor_factory)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    deadline = time.monotonic() + join_timeout_s
    while not worker.state.in_group:
        if task.done():
            task.result()
            raise RuntimeError("worker exited before joining its group")
        if time.monotonic() > deadline:
            raise TimeoutError("worker did not join its group")
        await asyncio.sleep(0.05)
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=120)


def request(settings: Settings, image: str, **fields: Any) -> EditRequest:
    body: dict[str, Any] = {"request_id": f"r-{uuid.uuid4().hex[:12]}", "image": image, "num_inference_steps": 25}
    if "prompt" not in fields and "recolor" not in fields:
        body["prompt"] = "make it blue"
    body.update(fields)
    return EditRequest.model_validate(body)
