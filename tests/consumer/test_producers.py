"""What real producers send, produced with librdkafka (confluent-kafka) as platforms do.

Each test asserts the result event, the object in S3, the DLQ record where there is one, and that the
group's committed positions reach past the last record produced: the group keeps moving.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Producer

from consumer.cli.dlq import replay_dead_letters
from consumer.control import CancelRegistry, ControlReader
from consumer.http.metrics import WorkerMetrics
from consumer.http.readiness import WorkerState
from consumer.kafka import clients as kafka_io
from consumer.kafka.codec import encode_event
from consumer.kafka.settings import KafkaSettings
from consumer.settings import Settings
from pipeline import EditJob, GpuOutOfMemory, StandInEditor
from schemas.control import CancelRequested
from schemas.results import EditStatus
from tests.consumer.harness import (
    dead_letters,
    dlq_headers,
    librdkafka_produce,
    output_objects,
    png_bytes,
    positions_after,
    prepare,
    read_topic,
    request,
    results,
    running_worker,
    stage_image,
    wait_for_committed,
    wait_for_no_lag,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

CODECS = ("gzip", "snappy", "lz4", "zstd")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


async def test_batches_of_every_codec_on_the_request_topic_are_edited(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    store = await prepare(settings)
    image = stage_image(store, settings, "codec.png", png_bytes(64, 64))
    delivered: list[tuple[int, int]] = []
    sent: dict[str, str] = {}
    async with running_worker(settings, lambda: StandInEditor(edit_ms=20)) as worker:
        for codec in CODECS:
            requests = [
                request(settings, image, request_id=f"{codec}-{i}-{uuid.uuid4().hex[:6]}") for i in range(3)
            ]
            sent.update({r.request_id: codec for r in requests})
            # One key: the three records share one partition, so one compressed batch.
            delivered += librdkafka_produce(
                settings,
                [(codec.encode(), encode_event(r), []) for r in requests],
                compression=codec,
                one_batch=True,
            )
        by_id = {r.request_id: r for r in await results(settings, count=len(sent), settle_s=1.0)}
        committed = await wait_for_committed(settings, delivered)
        assert worker.state.problems == {}
    assert set(by_id) == set(sent)
    assert all(r.status is EditStatus.SUCCEEDED for r in by_id.values()), by_id
    assert sorted(output_objects(store, settings)) == sorted(f"edits/{rid}.png" for rid in sent)
    assert committed == positions_after(delivered)


async def test_batches_of_cancels_in_every_codec_on_the_control_topic_are_applied(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    store = await prepare(settings)
    image = stage_image(store, settings, "cancel.png", png_bytes(64, 64))
    doomed = {
        codec: request(settings, image, request_id=f"doomed-{codec}-{uuid.uuid4().hex[:6]}")
        for codec in CODECS
    }
    kept = request(settings, image)
    for codec, req in doomed.items():
        cancels = [CancelRequested(request_id=req.request_id), CancelRequested(request_id=f"other-{codec}")]
        librdkafka_produce(
            settings,
            [(b"cancels", encode_event(c), []) for c in cancels],
            topic=settings.kafka.control_topic,
            compression=codec,
            one_batch=True,
        )
    editor = StandInEditor(edit_ms=20)
    async with running_worker(settings, lambda: editor) as worker:
        delivered = librdkafka_produce(
            settings, [(r.request_id.encode(), encode_event(r), []) for r in [*doomed.values(), kept]]
        )
        by_id = {r.request_id: r for r in await results(settings, count=len(doomed) + 1, settle_s=1.0)}
        committed = await wait_for_committed(settings, delivered)
        assert worker.state.problems == {}
        assert worker.metrics.control_stalled._value.get() == 0
    for req in doomed.values():
        assert by_id[req.request_id].status is EditStatus.CANCELED, by_id[req.request_id]
    assert by_id[kept.request_id].status is EditStatus.SUCCEEDED
    assert editor.edits == 1
    assert list(output_objects(store, settings)) == [f"edits/{kept.request_id}.png"]
    assert committed == positions_after(delivered)


async def test_a_control_reader_that_cannot_make_progress_is_a_readiness_problem_and_a_metric() -> None:
    state, metrics = WorkerState(), WorkerMetrics()
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:9", request_timeout_ms=1000)
    reader = ControlReader(kafka, CancelRegistry(10), state=state, metrics=metrics, stall_after_s=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(reader.run(stop))
    try:
        for _ in range(100):
            if "control" in state.problems:
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)
    assert "control reader stalled" in state.problems["control"]
    assert metrics.control_stalled._value.get() == 1
    assert (
        sum(s.value for m in metrics.control_errors.collect() for s in m.samples if s.name.endswith("_total"))
        >= 1
    )
    state.model_ready = state.in_group = True
    assert not state.ready
    assert state.not_ready_reason.startswith("control: control reader stalled")


@pytest.mark.apache_kafka
async def test_a_transactional_producer_commits_and_aborts_and_committed_offsets_reach_the_end(
    make_settings: Callable[..., Settings],
) -> None:
    """Committed transactions are edited, aborted ones never (`read_committed`); the committed offset
    passes the transaction markers, so the lag reaches 0 (Apache Kafka only: Tansu fails InitProducerId
    and returns aborted records to `read_committed` readers)."""
    settings = make_settings()
    assert settings.kafka.isolation_level == "read_committed"
    store = await prepare(settings)
    image = stage_image(store, settings, "tx.png", png_bytes(64, 64))
    committed_reqs = [request(settings, image) for _ in range(2)]
    aborted_req = request(settings, image)
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "transactional.id": unique("tx"),
            "linger.ms": 0,
        }
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    for req in committed_reqs:
        producer.produce(settings.kafka.request_topic, key=b"tx", value=encode_event(req))
    producer.commit_transaction(30)
    producer.begin_transaction()
    producer.produce(settings.kafka.request_topic, key=b"tx", value=encode_event(aborted_req))
    producer.abort_transaction(30)
    editor = StandInEditor(edit_ms=20)
    async with running_worker(settings, lambda: editor):
        by_id = {r.request_id: r for r in await results(settings, count=2, settle_s=3.0)}
        lags = await wait_for_no_lag(settings)
    assert set(by_id) == {r.request_id for r in committed_reqs}
    assert all(r.status is EditStatus.SUCCEEDED for r in by_id.values())
    assert editor.edits == 2
    assert sorted(output_objects(store, settings)) == sorted(
        f"edits/{r.request_id}.png" for r in committed_reqs
    )
    assert set(lags.values()) == {0}


async def test_an_oversize_record_fails_with_a_bounded_dlq_copy_and_the_partition_moves_on(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    store = await prepare(settings)
    image = stage_image(store, settings, "big.png", png_bytes(64, 64))
    big = request(settings, image, request_id=unique("big"))
    after = request(settings, image, request_id=unique("after"))
    raw = encode_event(big)[:-1] + b" " * (2_621_440 - len(encode_event(big))) + b"}"  # valid JSON, 2.5 MiB
    async with running_worker(settings, lambda: StandInEditor(edit_ms=20)) as worker:
        delivered = librdkafka_produce(
            settings, [(b"same", raw, [("tenant-id", b"t-9")]), (b"same", encode_event(after), [])]
        )
        by_id = {r.request_id: r for r in await results(settings, count=2, settle_s=1.0)}
        (dead,) = await dead_letters(settings, count=1, settle_s=1.0)
        committed = await wait_for_committed(settings, delivered)
        assert worker.metrics.retries.labels(code="INVALID_EVENT")._value.get() == 0
        assert worker.state.problems == {}
    failed = by_id[big.request_id]
    assert failed.status is EditStatus.FAILED
    assert failed.error is not None
    assert failed.error.code.value == "INVALID_EVENT"
    assert f"{len(raw)} bytes" in failed.error.message
    assert by_id[after.request_id].status is EditStatus.SUCCEEDED
    headers = dlq_headers(dead)
    assert headers[kafka_io.DLQ_TRUNCATED] == "true"
    assert headers[kafka_io.DLQ_ORIGINAL_SIZE] == str(len(raw))
    assert headers[kafka_io.DLQ_ERROR_CODE] == "INVALID_EVENT"
    assert dead.value == raw[: kafka_io.DLQ_PREVIEW_BYTES]
    assert list(output_objects(store, settings)) == [f"edits/{after.request_id}.png"]
    assert committed == positions_after(delivered)


async def test_a_tombstone_after_a_success_is_skipped_without_a_result_and_committed_past(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    store = await prepare(settings)
    image = stage_image(store, settings, "tomb.png", png_bytes(64, 64))
    req = request(settings, image, request_id=unique("tomb"))
    key = req.request_id.encode()
    async with running_worker(settings, lambda: StandInEditor(edit_ms=20)) as worker:
        delivered = librdkafka_produce(settings, [(key, encode_event(req), []), (key, None, [])])
        events = await results(settings, count=1, settle_s=3.0)
        committed = await wait_for_committed(settings, delivered)
        assert worker.metrics.tombstones._value.get() == 1
    assert [(e.request_id, e.status) for e in events] == [(req.request_id, EditStatus.SUCCEEDED)]
    assert list(output_objects(store, settings)) == [f"edits/{req.request_id}.png"]
    assert await dead_letters(settings, count=1, timeout_s=2.0) == []
    assert committed == positions_after(delivered)


async def test_enveloped_requests_are_unwrapped_edited_and_echo_their_cloudevent(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    store = await prepare(settings)
    image = stage_image(store, settings, "env.png", png_bytes(64, 64))
    reqs = {name: request(settings, image, request_id=unique(name)) for name in ENVELOPES}
    ce = {"specversion": "1.0", "source": "/shop", "type": "com.example.edit"}  # + id, data
    structured = [("content-type", b"application/cloudevents+json")]

    def body(name: str) -> dict[str, object]:
        return json.loads(encode_event(reqs[name]))

    records = {
        "structured": (
            json.dumps(
                {**ce, "id": "s-1", "datacontenttype": "application/json", "data": body("structured")}
            ),
            structured,
        ),
        "dapr": (
            json.dumps(
                {
                    **ce,
                    "id": "d-1",
                    "type": "com.dapr.event.sent",
                    "topic": settings.kafka.request_topic,
                    "pubsubname": "pubsub",
                    "traceid": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                    "datacontenttype": "application/json",
                    "data": body("dapr"),
                }
            ),
            structured,
        ),
        "binary": (
            json.dumps(body("binary")),
            [("ce_specversion", b"1.0"), ("ce_id", b"b-1"), ("ce_source", b"/shop"), ("ce_type", b"t.b")],
        ),
        "bom": ("\ufeff" + json.dumps(body("bom")), []),
        "registry": (json.dumps(body("registry")), []),
    }
    values = {name: value.encode() for name, (value, _) in records.items()}
    values["registry"] = b"\x00\x00\x00\x00\x2a" + values["registry"]  # magic byte + schema id 42
    async with running_worker(settings, lambda: StandInEditor(edit_ms=20)):
        delivered = librdkafka_produce(
            settings, [(reqs[name].request_id.encode(), values[name], records[name][1]) for name in ENVELOPES]
        )
        by_id = {r.request_id: r for r in await results(settings, count=len(ENVELOPES), settle_s=1.0)}
        committed = await wait_for_committed(settings, delivered)
    assert set(by_id) == {r.request_id for r in reqs.values()}
    assert all(r.status is EditStatus.SUCCEEDED for r in by_id.values()), by_id
    meta = {name: by_id[reqs[name].request_id].metadata for name in ENVELOPES}
    assert meta["structured"] == {"ce_id": "s-1", "ce_source": "/shop", "ce_type": "com.example.edit"}
    assert meta["dapr"] == {"ce_id": "d-1", "ce_source": "/shop", "ce_type": "com.dapr.event.sent"}
    assert meta["binary"] == {"ce_id": "b-1", "ce_source": "/shop", "ce_type": "t.b"}
    assert meta["bom"] == meta["registry"] == {}
    assert sorted(output_objects(store, settings)) == sorted(
        f"edits/{r.request_id}.png" for r in reqs.values()
    )
    assert await dead_letters(settings, count=1, timeout_s=2.0) == []
    assert committed == positions_after(delivered)


ENVELOPES = ("structured", "dapr", "binary", "bom", "registry")


async def test_dlq_copies_keep_the_original_headers_and_replay_restores_them(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(worker={"max_attempts": 1})
    store = await prepare(settings)
    image = stage_image(store, settings, "hdr.png", png_bytes(64, 64))
    req = request(settings, image, request_id=unique("hdr"))
    original = [
        ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("ce_id", b"evt-1"),
        ("ce_source", b"/shop"),
        ("ce_type", b"com.example.edit"),
        ("ce_specversion", b"1.0"),
        ("tenant-id", b"acme"),
    ]
    gpu_broken = True

    def fault(job: EditJob) -> None:
        if gpu_broken:
            raise GpuOutOfMemory("CUDA out of memory (injected)")

    async with running_worker(settings, lambda: StandInEditor(edit_ms=20, fault=fault)):
        librdkafka_produce(settings, [(req.request_id.encode(), encode_event(req), original)])
        (failed,) = await results(settings, count=1)
        (dead,) = await dead_letters(settings, count=1)
        gpu_broken = False  # the cause is fixed: replay
        summary = await replay_dead_letters(
            settings.kafka, codes=set(), dry_run=False, group_id=f"replay-{settings.kafka.group_id}"
        )
        events = await results(settings, count=2)
        lags = await wait_for_no_lag(settings)
        replayed = await read_topic(settings, settings.kafka.request_topic, count=2)
    assert failed.status is EditStatus.FAILED
    assert failed.error is not None
    assert failed.error.code.value == "GPU_OUT_OF_MEMORY"
    copied = [(k, bytes(v)) for k, v in dead.headers if not k.startswith("klein-edit.")]
    assert copied == original
    assert dlq_headers(dead)[kafka_io.DLQ_ERROR_CODE] == "GPU_OUT_OF_MEMORY"
    assert summary["replayed"] == {"GPU_OUT_OF_MEMORY": 1}
    request_records = [r for r in replayed if dict(r.headers).get("klein-edit.replayed-from-offset")]
    (again,) = request_records
    assert [(k, bytes(v)) for k, v in again.headers if not k.startswith("klein-edit.")] == original
    assert again.value == encode_event(req)
    assert [e.status for e in events] == [EditStatus.FAILED, EditStatus.SUCCEEDED]
    assert events[1].metadata == {"ce_id": "evt-1", "ce_source": "/shop", "ce_type": "com.example.edit"}
    assert list(output_objects(store, settings)) == [f"edits/{req.request_id}.png"]
    assert set(lags.values()) == {0}
