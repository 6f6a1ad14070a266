"""W3C trace context: a request's `traceparent` reaches its result, progress and DLQ records unchanged."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Producer

from consumer.kafka import clients as kafka_io
from consumer.kafka.tracing import trace_headers
from consumer.settings import Settings
from pipeline import StandInEditor
from schemas.results import EditStatus
from tests.consumer.harness import (
    dead_letters,
    no_lag,
    png_bytes,
    prepare,
    read_topic,
    running_worker,
    stage_image,
    wait_for_no_lag,
)

PARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
STATE = b"congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"


def test_a_valid_traceparent_and_its_tracestate_are_carried_unchanged() -> None:
    carried = trace_headers([("tenant", b"acme"), ("traceparent", PARENT), ("tracestate", STATE)])
    assert carried == [("traceparent", PARENT), ("tracestate", STATE)]
    assert trace_headers([("Traceparent", PARENT)]) == [("traceparent", PARENT)]  # names are case-blind
    future = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"
    assert trace_headers([("traceparent", future)]) == [("traceparent", future)]


@pytest.mark.parametrize(
    "value",
    [
        b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent id
        b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",  # upper case
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",  # version 00 has four fields
        b"00-4bf92f3577b34da6-00f067aa0ba902b7-01",  # short trace id
        b"\xff\xfe",
        b"",
    ],
)
def test_a_malformed_traceparent_is_dropped_with_its_tracestate(value: bytes) -> None:
    assert trace_headers([("traceparent", value), ("tracestate", STATE)]) == []


def test_no_trace_context_without_a_traceparent() -> None:
    assert trace_headers(None) == []
    assert trace_headers([("tracestate", STATE), ("traceparent", None)]) == []  # type: ignore[list-item]


def _headers(record: object) -> dict[str, bytes]:
    return {name: bytes(value) for name, value in getattr(record, "headers", ()) or ()}


@pytest.mark.integration
@pytest.mark.timeout(120)
async def test_traceparent_reaches_the_result_progress_and_dlq_records(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(worker={"progress_interval_s": 0.05})
    store = await prepare(settings)
    await kafka_io.ensure_topics(settings.kafka, [settings.kafka.progress_topic])
    image = stage_image(store, settings, "a.png", png_bytes(64, 64))
    tag = uuid.uuid4().hex[:6]
    edited = {"request_id": f"traced-{tag}", "image": image, "prompt": "p", "num_inference_steps": 25}
    edited["progress"] = True
    broken = {"request_id": f"broken-{tag}", "image": image, "prompt": "p", "num_inference_steps": 10}
    other_parent = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    def produce() -> None:
        producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers, "linger.ms": 0})
        producer.produce(
            settings.kafka.request_topic,
            key=edited["request_id"],
            value=json.dumps(edited),
            headers=[("traceparent", PARENT), ("tracestate", STATE)],
        )
        producer.flush(30)
        producer.produce(
            settings.kafka.request_topic,
            key=broken["request_id"],
            value=json.dumps(broken),
            headers=[("traceparent", other_parent)],
        )
        assert producer.flush(30) == 0

    async with running_worker(settings, lambda: StandInEditor(edit_ms=200)):
        await asyncio.to_thread(produce)
        result_records = await read_topic(settings, settings.kafka.result_topic, count=2)
        dlq = await dead_letters(settings, count=1, settle_s=0.5)
        assert await wait_for_no_lag(settings) == no_lag(settings)
    progress = await read_topic(settings, settings.kafka.progress_topic, count=1, settle_s=0.5)

    by_key = {r.key.decode(): r for r in result_records if r.key}
    ok = by_key[str(edited["request_id"])]
    assert json.loads(ok.value)["status"] == EditStatus.SUCCEEDED.value
    assert _headers(ok)["traceparent"] == PARENT
    assert _headers(ok)["tracestate"] == STATE
    assert progress
    for record in progress:
        assert _headers(record)["traceparent"] == PARENT
        assert _headers(record)["tracestate"] == STATE
    failed = by_key[str(broken["request_id"])]
    assert json.loads(failed.value)["status"] == EditStatus.FAILED.value
    assert _headers(failed)["traceparent"] == other_parent
    (dead,) = dlq
    assert _headers(dead)["traceparent"] == other_parent
    assert "tracestate" not in _headers(dead)
