"""Shared helpers for the consumer's integration tests: isolated settings, publishing, reading back.

Each test gets its own topics, consumer group and buckets (a random tag), so tests never see each
other's records or objects on the shared broker and S3 server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from confluent_kafka import KafkaException, Producer
from PIL import Image
from pydantic import SecretStr

from consumer.app import build_worker
from consumer.cli.local_services import free_port
from consumer.kafka import clients as kafka_io
from consumer.kafka.codec import encode_event
from consumer.kafka.settings import KafkaSettings
from consumer.provenance import OutputSigner
from consumer.settings import Settings, WorkerSettings
from consumer.worker import EditWorker
from pipeline import Editor
from pipeline.config import TINY_RANDOM, PipelineSettings
from pipeline.moderation.settings import TINY_IMAGE_CLASSIFIER, ModerationSettings
from schemas.requests import EditRequest
from schemas.results import EditCompleted
from storage import AttemptLedger, ImageStore, S3Location, S3Settings
from tests.services import S3_ACCESS_KEY, S3_SECRET_KEY

PROJECT_ROOT = Path(__file__).resolve().parents[2]


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
        "create_topics": True,
    }
    s3: dict[str, Any] = {
        "endpoint_url": s3_endpoint,
        "access_key_id": SecretStr(S3_ACCESS_KEY),
        "secret_access_key": SecretStr(S3_SECRET_KEY),
        "input_bucket": f"in-{tag}",
        "output_bucket": f"out-{tag}",
        "connect_timeout_s": 1.0,
        "read_timeout_s": 3.0,
        "max_attempts": 1,
    }
    pipeline: dict[str, Any] = {"model": TINY_RANDOM, "device": "cpu", "warmup": False}
    worker: dict[str, Any] = {
        "name": f"w-{tag}",
        "http_port": None,
        "retry_backoff_s": 0.2,
        "drain_grace_s": 20,
    }
    # Moderation is on by default: the tests run the random-weight classifier of the real class (it
    # scores about 0.45, under the 0.85 threshold, so nothing is flagged unless a test says so).
    moderation: dict[str, Any] = {"model": TINY_IMAGE_CLASSIFIER}
    moderation.update(sections.get("moderation", {}))
    kafka.update(sections.get("kafka", {}))
    s3.update(sections.get("s3", {}))
    pipeline.update(sections.get("pipeline", {}))
    worker.update(sections.get("worker", {}))
    return Settings(
        kafka=KafkaSettings(**kafka),
        s3=S3Settings(**s3),
        pipeline=PipelineSettings(**pipeline),
        worker=WorkerSettings(**worker),
        moderation=ModerationSettings(**moderation),
        **{k: v for k, v in sections.items() if k not in ("kafka", "s3", "pipeline", "worker", "moderation")},
    )


async def prepare(settings: Settings) -> ImageStore:
    """Create the buckets and topics of these settings; returns a store for staging inputs."""
    store = ImageStore(settings.s3)
    store.ensure_bucket(settings.s3.input_bucket)
    store.ensure_bucket(settings.s3.output_bucket)
    k = settings.kafka
    # As an operator creates them: the worker never creates topics (nor does any client it opens).
    await kafka_io.ensure_topics(
        k, [*k.request_topics, k.result_topic, k.dlq_topic, k.progress_topic, k.control_topic]
    )
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
    """Send one record with the shared producer of these settings' cluster and wait for its ack."""
    producer = await shared_producer(settings)
    if isinstance(value, EditRequest):
        key = key or value.request_id.encode()
        value = encode_event(value)
    await producer.send_and_wait(topic or settings.kafka.request_topic, value=value, key=key, headers=headers)


_PRODUCERS: dict[str, AIOKafkaProducer] = {}


async def shared_producer(settings: Settings) -> AIOKafkaProducer:
    """One started producer per cluster and credentials for the whole session (tests share one event
    loop): a publish costs one round trip, not a client start-up. Closed by `close_shared_producers`."""
    k = settings.kafka
    identity = k.model_dump_json(
        include={"bootstrap_servers", "security_protocol", "sasl_mechanism", "sasl_username"}
    )
    producer = _PRODUCERS.get(identity)
    if producer is None:
        producer = kafka_io.make_producer(k)
        await producer.start()
        _PRODUCERS[identity] = producer
    return producer


async def close_shared_producers() -> None:
    while _PRODUCERS:
        _, producer = _PRODUCERS.popitem()
        with contextlib.suppress(Exception):  # its broker may be a test's own, stopped already
            await asyncio.wait_for(producer.stop(), timeout=10.0)


Header = tuple[str, bytes]


def librdkafka_produce(
    settings: Settings,
    records: list[tuple[bytes | None, bytes | None, list[Header]]],
    *,
    topic: str | None = None,
    compression: str = "none",
    one_batch: bool = False,
    **config: Any,
) -> list[tuple[int, int]]:
    """Produce `(key, value, headers)` records with librdkafka, as real platforms do; blocking.

    `one_batch` lingers so the records (same key, so same partition) share one compressed batch;
    otherwise each record is flushed alone (`linger.ms=0`), one record per batch, which keeps
    Tansu's end offsets right. Returns `(partition, offset)` of each record, in order.
    """
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "compression.type": compression,
            "linger.ms": 200 if one_batch else 0,
            "enable.idempotence": False,
            "message.max.bytes": 10_000_000,
            **config,
        }
    )
    delivered: list[tuple[int, int]] = []
    errors: list[str] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            delivered.append((msg.partition(), msg.offset()))

    for key, value, headers in records:
        producer.produce(
            topic or settings.kafka.request_topic,
            key=key,
            value=value,
            headers=headers,
            on_delivery=on_delivery,
        )
        if not one_batch:
            producer.flush(30)
    if producer.flush(30) != 0:
        raise KafkaException("librdkafka did not deliver every record in 30 s")
    assert not errors, errors
    return delivered


async def wait_for_committed(
    settings: Settings, delivered: list[tuple[int, int]], *, topic: str | None = None, timeout_s: float = 30.0
) -> dict[int, int | None]:
    """Until the group's committed position of each partition is past its last delivered record.

    Returns the committed positions by partition (compare with `positions_after(delivered)`).
    """
    topic = topic or settings.kafka.request_topic
    wanted = positions_after(delivered)
    consumer = kafka_io.make_consumer(settings.kafka, group_id=settings.kafka.group_id)
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            got = {p: await consumer.committed(TopicPartition(topic, p)) for p in wanted}
            if all((got[p] or 0) >= wanted[p] for p in wanted) or time.monotonic() > deadline:
                return got
            await asyncio.sleep(0.3)
    finally:
        await consumer.stop()


def positions_after(delivered: list[tuple[int, int]]) -> dict[int, int | None]:
    """The position after the last delivered record of each partition."""
    last: dict[int, int | None] = {}
    for partition, offset in delivered:
        last[partition] = max(last.get(partition) or 0, offset + 1)
    return last


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


async def results(
    settings: Settings, *, count: int, timeout_s: float = 60.0, settle_s: float = 0.0
) -> list[EditCompleted]:
    records = await read_topic(
        settings, settings.kafka.result_topic, count=count, timeout_s=timeout_s, settle_s=settle_s
    )
    return [EditCompleted.model_validate_json(r.value) for r in records if r.value]


async def lag(settings: Settings, topics: list[str] | None = None) -> dict[str, int]:
    """End offset minus the group's committed offset, per partition (0 everywhere = nothing lost)."""
    k = settings.kafka
    consumer = kafka_io.make_consumer(k, group_id=k.group_id)
    await consumer.start()
    try:
        out: dict[str, int] = {}
        for topic in topics or k.request_topics:
            partitions = await kafka_io.topic_partitions(consumer, topic)
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
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=settings.s3.output_prefix
    ):
        for item in page.get("Contents", []):
            objects[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return objects


@asynccontextmanager
async def running_worker(
    settings: Settings,
    editor_factory: Callable[[], Editor],
    *,
    join_timeout_s: float = 60.0,
    signer: OutputSigner | None = None,
) -> AsyncIterator[Any]:
    """An in-process `EditWorker` that has joined its group; drained and stopped on exit. `signer`
    replaces the C2PA signer the settings configure (to inject signing faults)."""
    if signer is None:
        worker = build_worker(settings, editor_factory=editor_factory)
    else:
        store = ImageStore(settings.s3)
        worker = EditWorker(
            settings,
            editor_factory=editor_factory,
            store=store,
            ledger=AttemptLedger(store, settings.s3),
            signer=signer,
        )
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
    body: dict[str, Any] = {
        "request_id": f"r-{uuid.uuid4().hex[:12]}",
        "image": image,
        "num_inference_steps": 25,
    }
    if "prompt" not in fields and "recolor" not in fields:
        body["prompt"] = "make it blue"
    body.update(fields)
    return EditRequest.model_validate(body)


# -- real worker processes ------------------------------------------------------------------------------


def settings_env(settings: Settings) -> dict[str, str]:
    """`settings` rendered as KLEIN_EDIT_* variables (nested with `__`, lists and dicts as JSON, secrets
    unwrapped, None and defaults left out) so a worker subprocess builds exactly the same `Settings`."""
    env: dict[str, str] = {}
    for section_name in type(settings).model_fields:
        section = getattr(settings, section_name)
        for field_name, info in type(section).model_fields.items():
            value = getattr(section, field_name)
            if value is None or (not info.default_factory and value == info.default):
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, list | dict | tuple):
                text = json.dumps(value)
            else:
                text = str(value)
            env[f"KLEIN_EDIT_{section_name.upper()}__{field_name.upper()}"] = text
    return env


class WorkerProcess:
    """`python -m tests.consumer.worker_process SPEC` with `settings` in its environment.

    Its stderr (JSON logs) goes to a file so tests can wait for log events. `kill()` is idempotent;
    the `worker_processes` fixture calls it for every process a test started, pass or fail.
    """

    def __init__(self, settings: Settings, spec: str, *, name: str | None = None, **worker: Any) -> None:
        self.spec = spec
        env = {k: v for k, v in os.environ.items() if not k.startswith("KLEIN_EDIT_")}
        env.update(settings_env(settings))
        env["KLEIN_EDIT_WORKER__NAME"] = name or f"{settings.worker.name}-{uuid.uuid4().hex[:4]}"
        env["KLEIN_EDIT_WORKER__HTTP_PORT"] = str(free_port())  # None cannot be written to the environment
        for key, value in worker.items():
            env[f"KLEIN_EDIT_WORKER__{key.upper()}"] = str(value)
        self.name = env["KLEIN_EDIT_WORKER__NAME"]
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - kept open for the child's lifetime
            prefix="klein-edit-worker-", suffix=".log", delete=False
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.consumer.worker_process", spec],
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def log_text(self) -> str:
        with open(self._log.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.log_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("event") == name:
                found.append(entry)
        return found

    async def wait_for_event(
        self, name: str, *, count: int = 1, timeout_s: float = 60.0
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.events(name)
            if len(found) >= count:
                return found
            if self.returncode is not None:
                raise AssertionError(
                    f"worker exited ({self.returncode}) before {name!r}:\n{self.log_text()[-4000:]}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no {name!r} from the worker in {timeout_s} s:\n{self.log_text()[-4000:]}"
                )
            await asyncio.sleep(0.1)

    async def wait_assigned(self, *, timeout_s: float = 60.0) -> None:
        """Until the worker joined its group and got partitions (or an empty assignment)."""
        await self.wait_for_event("partitions.assigned", timeout_s=timeout_s)

    def signal(self, sig: signal.Signals) -> None:
        if self.returncode is None:
            self.process.send_signal(sig)

    async def wait_exit(self, timeout_s: float = 60.0) -> int:
        deadline = time.monotonic() + timeout_s
        while self.returncode is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker still running after {timeout_s} s:\n{self.log_text()[-4000:]}")
            await asyncio.sleep(0.1)
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


async def wait_for_attempt_record(store: ImageStore, settings: Settings, *, timeout_s: float = 60.0) -> str:
    """Until the attempt ledger holds an object: a worker picked a record up (the edit starts next)."""
    prefix = f"{settings.s3.state_prefix}attempts/"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        listed = store.client.list_objects_v2(Bucket=settings.s3.output_bucket, Prefix=prefix)
        if listed.get("Contents"):
            return listed["Contents"][0]["Key"]
        await asyncio.sleep(0.1)
    raise TimeoutError("no record was picked up")


# -- checks shared by the delivery tests -------------------------------------------------------------------


async def dead_letters(
    settings: Settings, *, count: int, timeout_s: float = 60.0, settle_s: float = 0.0
) -> list[ConsumerRecord[bytes, bytes]]:
    return await read_topic(
        settings, settings.kafka.dlq_topic, count=count, timeout_s=timeout_s, settle_s=settle_s
    )


def dlq_headers(record: ConsumerRecord[bytes, bytes]) -> dict[str, str]:
    return {key: bytes(value).decode() for key, value in record.headers or () if value is not None}


def by_request(events: list[EditCompleted]) -> dict[str, list[EditCompleted]]:
    grouped: dict[str, list[EditCompleted]] = {}
    for event in events:
        grouped.setdefault(event.request_id, []).append(event)
    return grouped


def assert_one_output_per_request(events: list[EditCompleted], objects: dict[str, bytes]) -> None:
    """No request has two different outputs: every succeeded result of a request names the same object
    with the same bytes, and the bucket holds exactly one object per succeeded request."""
    succeeded: dict[str, set[tuple[str, str]]] = {}
    for event in events:
        if event.output is not None:
            succeeded.setdefault(event.request_id, set()).add((event.output.uri, event.output.sha256))
    for request_id, outputs in succeeded.items():
        assert len(outputs) == 1, f"{request_id} has {len(outputs)} different outputs: {outputs}"
    assert len(objects) == len(succeeded), (sorted(objects), sorted(succeeded))
    for outputs in succeeded.values():
        ((uri, sha),) = outputs
        key = uri.split("/", 3)[3]
        assert hashlib.sha256(objects[key]).hexdigest() == sha


def no_lag(settings: Settings) -> dict[str, int]:
    return {
        f"{topic}-{p}": 0
        for topic in settings.kafka.request_topics
        for p in range(settings.kafka.topic_partitions)
    }
