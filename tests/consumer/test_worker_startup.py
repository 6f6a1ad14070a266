"""Start-up against brokers that are not there yet, or that refuse the worker.

A Kafka outage at deploy time must not become a crash loop that reloads the model on every restart:
the worker keeps the loaded model, retries the brokers (not ready meanwhile) and joins when they come
up. Only refused credentials stop it, with one clear line.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from pydantic import SecretStr

from consumer.app import build_worker, serve
from consumer.services import TansuBroker, free_port
from consumer.settings import KafkaSettings, Settings, WorkerSettings
from consumer.worker import EXIT_OK, EditWorker, KafkaAccessDenied
from pipeline import StandInEditor
from storage import ImageStore, S3Settings
from tests.consumer.harness import png_bytes, prepare, publish, request, results, stage_image


async def until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def offline_settings(bootstrap: str, **kafka: object) -> Settings:
    return Settings(
        kafka=KafkaSettings(bootstrap_servers=bootstrap, startup_timeout_s=1.0, **kafka),  # type: ignore[arg-type]
        s3=S3Settings(
            access_key_id=SecretStr("x"),
            secret_access_key=SecretStr("x"),
            input_bucket="in",
            output_bucket="out",
        ),
        worker=WorkerSettings(http_port=None),
    )


async def test_unreachable_brokers_keep_the_model_and_are_retried_not_ready() -> None:
    closed = f"127.0.0.1:{free_port()}"
    loads = 0

    def load() -> StandInEditor:
        nonlocal loads
        loads += 1
        return StandInEditor(edit_ms=1)

    worker = build_worker(offline_settings(closed), editor_factory=load)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await until(lambda: "kafka" in worker.state.problems, 20, "the outage was never reported")
        assert worker.state.model_ready
        assert not worker.state.ready
        assert closed in worker.state.not_ready_reason  # /readyz names the brokers
        await asyncio.sleep(3.0)  # past startup_timeout_s: still retrying, not exiting
        assert not task.done()
        assert loads == 1
    finally:
        stop.set()
    assert await asyncio.wait_for(task, timeout=10) == EXIT_OK  # SIGTERM while waiting: a clean exit


@pytest.mark.integration
@pytest.mark.timeout(120)
async def test_a_broker_that_comes_up_after_the_model_loaded_is_joined_without_a_restart(
    make_settings: Callable[..., Settings],
) -> None:
    port = free_port()
    settings = make_settings(kafka={"bootstrap_servers": f"127.0.0.1:{port}"})
    loads = 0

    def load() -> StandInEditor:
        nonlocal loads
        loads += 1
        return StandInEditor(edit_ms=10)

    store = ImageStore(settings.s3)
    for bucket in (settings.s3.input_bucket, settings.s3.output_bucket):
        store.ensure_bucket(bucket)  # S3 is there; only Kafka is not
    worker = build_worker(settings, editor_factory=load)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(worker, stop))
    broker = TansuBroker(port=port)  # nothing listens on the port yet
    try:
        await until(lambda: "kafka" in worker.state.problems, 30, "the outage was never reported")
        assert worker.state.model_ready
        assert not worker.state.ready

        broker.start()  # the cluster comes up after the model loaded
        await prepare(settings)
        image = stage_image(store, settings, "late.png", png_bytes(64, 64))
        await until(lambda: worker.state.ready, 60, "the worker never joined")
        await publish(settings, request(settings, image))
        (result,) = await results(settings, count=1)
        assert result.status.value == "succeeded"
        assert loads == 1  # joined without a restart: the model was loaded once
        assert not task.done()
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, timeout=60)
        finally:
            broker.stop()


@pytest.mark.integration
async def test_refused_credentials_stop_start_up_with_one_clear_error(kafka_bootstrap: str) -> None:
    settings = offline_settings(
        kafka_bootstrap,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="klein-edit",
        sasl_password=SecretStr("wrong"),
    )
    worker: EditWorker = build_worker(settings, editor_factory=lambda: StandInEditor(edit_ms=1))
    with pytest.raises(KafkaAccessDenied, match=rf"Kafka at {kafka_bootstrap} refused the worker") as info:
        await asyncio.wait_for(worker.run(asyncio.Event()), timeout=30)
    assert "SASL" in str(info.value)
    assert "wrong" not in str(info.value)  # never the secret
    assert worker.state.model_ready  # the model loads first, then the group is joined
