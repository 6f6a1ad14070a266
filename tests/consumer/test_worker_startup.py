"""Start-up against brokers or S3 that are not there yet, or brokers that refuse the worker.

A Kafka or S3 outage at deploy time must not become a crash loop that reloads the model on every
restart, nor hold the load back: the model loads while the worker retries the brokers and the output
bucket (not ready meanwhile), and it joins when they come up. Only refused credentials stop it, with
one clear line.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
import pytest
import structlog
from pydantic import SecretStr

from consumer.app import build_worker, serve
from consumer.cli.local_services import MotoServer, TansuBroker, free_port
from consumer.kafka.settings import KafkaSettings
from consumer.settings import Settings, WorkerSettings
from consumer.worker import EXIT_OK, EditWorker, KafkaAccessDenied
from pipeline import StandInEditor
from pipeline.moderation.settings import TINY_IMAGE_CLASSIFIER, ModerationSettings
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
        moderation=ModerationSettings(model=TINY_IMAGE_CLASSIFIER),
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
        await until(lambda: worker.state.model_ready, 20, "the model never loaded")
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
        await until(lambda: worker.state.model_ready, 30, "the model never loaded")
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


async def http_get(port: int, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}", timeout=aiohttp.ClientTimeout(total=5)) as response,
    ):
        return response.status, await response.text()


@pytest.mark.integration
@pytest.mark.timeout(120)
async def test_the_model_loads_while_s3_is_down_and_the_worker_edits_once_it_comes_up(
    make_settings: Callable[..., Settings],
) -> None:
    s3_port, http_port = free_port(), free_port()
    settings = make_settings(
        s3={"endpoint_url": f"http://127.0.0.1:{s3_port}"},
        worker={"http_port": http_port, "http_host": "127.0.0.1"},
    )
    loads = 0

    def load() -> StandInEditor:
        nonlocal loads
        loads += 1
        time.sleep(2.0)  # a load that takes a while, on the GPU thread
        return StandInEditor(edit_ms=10)

    worker = build_worker(settings, editor_factory=load)
    stop = asyncio.Event()
    moto = MotoServer(port=s3_port)  # nothing listens on the port yet
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(serve(worker, stop))
        try:
            await until(lambda: "output_bucket" in worker.state.problems, 30, "the outage was never reported")
            status, body = await http_get(http_port, "/readyz")
            assert status == 503
            assert "model loading" in body  # what is being waited for, all of it, while it lasts
            await until(lambda: worker.state.model_ready, 30, "the model did not load while S3 was down")
            assert await http_get(http_port, "/startupz") == (200, "started\n")
            status, body = await http_get(http_port, "/readyz")
            assert status == 503
            assert f"cannot check the output bucket s3://{settings.s3.output_bucket}" in body
            assert "cannot connect to the S3 endpoint" in body
            assert "model loading" not in body

            moto.start()  # S3 comes up after the model loaded
            store = await prepare(settings)
            image = stage_image(store, settings, "late-s3.png", png_bytes(64, 64))
            await until(lambda: worker.state.ready, 60, "the worker never became ready")
            await publish(settings, request(settings, image))
            (result,) = await results(settings, count=1)
            assert result.status.value == "succeeded"
            assert loads == 1  # the load was neither held back nor repeated
            assert not task.done()
        finally:
            stop.set()
            try:
                assert await asyncio.wait_for(task, timeout=60) == EXIT_OK
            finally:
                moto.stop()
    events = [e["event"] for e in logs]
    assert events.index("model.loading") < events.index("storage.output_bucket_unusable")
    assert events.index("model.ready") < events.index("storage.output_bucket_found")
