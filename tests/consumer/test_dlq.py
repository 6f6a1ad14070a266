"""`klein-edit dlq replay`: dead-lettered requests go back to their topic and are done once fixed.

The cause here is an S3 outage that outlasts the worker's retries (a private moto server, SIGSTOPped).
"""

from __future__ import annotations

import asyncio

import pytest

from consumer.cli.dlq import REPLAYED_FROM_OFFSET, replay_dead_letters
from consumer.cli.local_services import MotoServer
from consumer.kafka import clients as kafka_io
from pipeline import StandInEditor
from schemas.errors import ErrorCode
from schemas.results import EditStatus
from tests.consumer.harness import (
    assert_one_output_per_request,
    by_request,
    dead_letters,
    dlq_headers,
    integration_settings,
    no_lag,
    output_objects,
    png_bytes,
    prepare,
    publish,
    read_topic,
    request,
    results,
    running_worker,
    stage_image,
    wait_for_no_lag,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(150)
async def test_s3_outage_past_max_attempts_is_dead_lettered_then_replayed_and_done(
    kafka_bootstrap: str, private_moto: MotoServer
) -> None:
    settings = integration_settings(
        kafka_bootstrap,
        private_moto.endpoint_url,
        worker={"max_attempts": 2, "retry_backoff_s": 0.2},
        s3={"read_timeout_s": 1.0},
    )
    store = await prepare(settings)
    image = stage_image(store, settings, "a.png", png_bytes(64, 64))
    req = request(settings, image)
    bad = request(settings, "missing.png")  # failed for good: not dead-lettered, so never replayed
    editor = StandInEditor(edit_ms=50)
    assert private_moto.process is not None
    async with running_worker(settings, lambda: editor):
        private_moto.pause()
        await publish(settings, req)
        (failed,) = await results(settings, count=1, timeout_s=60)
        (dead,) = await dead_letters(settings, count=1)
        assert await wait_for_no_lag(settings) == no_lag(settings)  # given up on and committed
        private_moto.resume()  # the cause is fixed
        await publish(settings, bad)
        await results(settings, count=2)

        summary = await replay_dead_letters(settings.kafka, codes=set(), dry_run=False, group_id="replayer")
        assert summary["replayed"] == {"STORAGE_UNAVAILABLE": 1}
        again = await replay_dead_letters(settings.kafka, codes=set(), dry_run=False, group_id="replayer")
        assert again["replayed"] == {}  # its progress was committed: nothing is replayed twice

        events = await results(settings, count=3, timeout_s=60)
        assert await wait_for_no_lag(settings) == no_lag(settings)
        await asyncio.sleep(0.5)

    assert failed.request_id == req.request_id
    assert failed.status is EditStatus.FAILED
    assert failed.error is not None
    assert failed.error.code is ErrorCode.STORAGE_UNAVAILABLE
    assert failed.error.retryable is True
    assert failed.attempt == 2
    headers = dlq_headers(dead)
    assert headers[kafka_io.DLQ_ERROR_CODE] == "STORAGE_UNAVAILABLE"
    assert headers[kafka_io.DLQ_ATTEMPTS] == "2"
    assert headers[kafka_io.DLQ_ORIGINAL_TOPIC] == settings.kafka.request_topic

    # The replayed copy is on the original topic, marked with where it came from, and was edited.
    requests = await read_topic(settings, settings.kafka.request_topic, count=3)
    (replayed,) = [r for r in requests if any(k == REPLAYED_FROM_OFFSET for k, _ in r.headers or ())]
    assert replayed.value == dead.value
    grouped = by_request(events)
    assert [e.status for e in grouped[req.request_id]] == [EditStatus.FAILED, EditStatus.SUCCEEDED]
    assert editor.edits == 1
    assert_one_output_per_request(events, output_objects(store, settings))
