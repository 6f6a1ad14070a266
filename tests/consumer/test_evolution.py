"""Schema evolution end to end: a librdkafka producer newer than the worker adds fields; a misspelt field
is rejected; strict mode rejects every unknown field. Real broker, real S3, an in-process worker."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Producer

from consumer.settings import Settings
from pipeline import StandInEditor
from schemas.errors import ErrorCode
from schemas.results import EditStatus
from tests.consumer.harness import (
    by_request,
    dead_letters,
    no_lag,
    output_objects,
    png_bytes,
    prepare,
    results,
    running_worker,
    stage_image,
    wait_for_no_lag,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def produce(settings: Settings, *bodies: dict[str, Any]) -> None:
    """Publish each body as its own JSON record, keyed by its request_id, with librdkafka."""

    def send() -> None:
        producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers, "linger.ms": 0})
        for body in bodies:
            producer.produce(settings.kafka.request_topic, key=body["request_id"], value=json.dumps(body))
            producer.flush(30)
        assert producer.flush(30) == 0

    await asyncio.to_thread(send)


async def test_fields_a_newer_producer_adds_are_ignored_and_reported_a_misspelling_is_rejected(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    store = await prepare(settings)
    image = stage_image(store, settings, "a.png", png_bytes(64, 64))
    tag = uuid.uuid4().hex[:6]
    base = {"image": image, "prompt": "make it blue", "num_inference_steps": 25}
    newer = {
        **base,
        "request_id": f"newer-{tag}",
        "priority": "high",
        "output": {"format": "png", "dpi": 300},
    }
    typo = {**base, "request_id": f"typo-{tag}", "seeds": 7}

    async with running_worker(settings, lambda: StandInEditor(edit_ms=0)):
        await produce(settings, newer, typo)
        events = await results(settings, count=2)
        dlq = await dead_letters(settings, count=1, settle_s=1.0)
        assert await wait_for_no_lag(settings) == no_lag(settings)

    by_id = by_request(events)
    (edited,) = by_id[newer["request_id"]]
    assert edited.status is EditStatus.SUCCEEDED
    assert set(edited.warnings) == {"unknown field ignored: priority", "unknown field ignored: output.dpi"}
    assert f"edits/{newer['request_id']}.png" in output_objects(store, settings)

    (rejected,) = by_id[typo["request_id"]]
    assert rejected.status is EditStatus.FAILED
    assert rejected.error is not None
    assert rejected.error.code is ErrorCode.INVALID_EVENT
    assert rejected.error.message.startswith("seeds: unknown field, did you mean 'seed'?")
    assert rejected.warnings == []
    assert [json.loads(r.value)["request_id"] for r in dlq] == [typo["request_id"]]
