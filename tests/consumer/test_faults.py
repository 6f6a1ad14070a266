"""GPU, process, S3 and broker faults: retried, dead-lettered or crashed as `policy.decide` says.

OOM and S3 faults run an in-process worker with an injected editor; process deaths (poison, sticky CUDA
errors) use real worker processes; outages stop a private broker or S3 server with SIGSTOP.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from consumer.cli.local_services import MotoServer, TansuBroker
from consumer.kafka import clients as kafka_io
from consumer.settings import Settings
from pipeline import EditJob, GpuOutOfMemory, StandInEditor
from schemas.errors import ErrorCode
from schemas.results import EditStatus
from tests.consumer.harness import (
    WorkerProcess,
    assert_one_output_per_request,
    by_request,
    dead_letters,
    dlq_headers,
    integration_settings,
    lag,
    no_lag,
    output_objects,
    png_bytes,
    prepare,
    publish,
    request,
    results,
    running_worker,
    stage_image,
    wait_for_attempt_record,
    wait_for_no_lag,
)

pytestmark = pytest.mark.integration

StartWorker = Callable[..., WorkerProcess]


# -- GPU out of memory ----------------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_oom_is_retried_once_and_dead_lettered_only_when_it_persists(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(worker={"max_attempts": 3, "retry_backoff_s": 0.1})
    store = await prepare(settings)
    image = stage_image(store, settings, "a.png", png_bytes(64, 64))
    once = request(settings, image, prompt="make it blue [oom-once]")
    always = request(settings, image, prompt="make it blue [oom-always]")
    seen: dict[str, int] = {}

    def fault(job: EditJob) -> None:
        for marker in ("oom-once", "oom-always"):
            if marker in job.prompt:
                seen[marker] = seen.get(marker, 0) + 1
                if marker == "oom-always" or seen[marker] == 1:
                    raise GpuOutOfMemory("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")

    editor = StandInEditor(edit_ms=50, fault=fault)
    async with running_worker(settings, lambda: editor):
        await publish(settings, once)
        await publish(settings, always)
        events = await results(settings, count=2)
        (dead,) = await dead_letters(settings, count=1, settle_s=1.0)
        assert await wait_for_no_lag(settings) == no_lag(settings)

    grouped = by_request(events)
    (recovered,) = grouped[once.request_id]
    assert recovered.status is EditStatus.SUCCEEDED
    assert recovered.attempt == 2
    (gave_up,) = grouped[always.request_id]
    assert gave_up.status is EditStatus.FAILED
    assert gave_up.error is not None
    assert gave_up.error.code is ErrorCode.GPU_OUT_OF_MEMORY
    assert gave_up.error.retryable is True
    assert gave_up.attempt == 2  # retried on the same worker at most once, although max_attempts is 3
    assert gave_up.cost.usd == 0
    assert seen == {"oom-once": 2, "oom-always": 2}
    headers = dlq_headers(dead)
    assert headers[kafka_io.DLQ_ERROR_CODE] == "GPU_OUT_OF_MEMORY"
    assert headers[kafka_io.DLQ_ATTEMPTS] == "2"
    assert dead.key == always.request_id.encode()
    assert_one_output_per_request(events, output_objects(store, settings))


# -- process deaths --------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_poison_message_that_kills_every_worker_is_dead_lettered_and_the_partition_moves_on(
    make_settings: Callable[..., Settings], worker_processes: StartWorker
) -> None:
    settings = make_settings(worker={"max_attempts": 2})
    store = await prepare(settings)
    image = stage_image(store, settings, "a.png", png_bytes(64, 64))
    marker = f"POISON-{uuid.uuid4().hex[:6]}"
    poison = request(settings, image, prompt=f"make it blue {marker}")
    after = [request(settings, image) for _ in range(2)]
    lane = b"one-partition"  # same key: the good requests queue behind the poison one
    for req in (poison, *after):
        await publish(settings, req, key=lane)

    crashes = 0
    for _ in range(settings.worker.max_attempts + 2):
        worker = worker_processes(settings, f"crash-on:{marker}")
        while worker.returncode is None and not worker.events("edit.dead_lettered"):
            await asyncio.sleep(0.2)
        if worker.returncode is not None:
            assert worker.returncode == 137, worker.log_text()[-3000:]
            crashes += 1
            continue
        break
    # Edit started max_attempts times, then given up on; an instant crash can beat the first (async)
    # count of a first delivery, costing one more crash (docs/reliability.md).
    assert settings.worker.max_attempts <= crashes <= settings.worker.max_attempts + 1

    assert await wait_for_no_lag(settings, timeout_s=60) == no_lag(settings)
    events = await results(settings, count=3, settle_s=1.0)
    dlq = await dead_letters(settings, count=1, settle_s=0.5)
    assert len(dlq) == 1, [(dlq_headers(r), r.value) for r in dlq]
    (dead,) = dlq
    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit(30) == 0

    grouped = by_request(events)
    (failed,) = grouped[poison.request_id]
    assert failed.status is EditStatus.FAILED
    assert failed.error is not None
    assert failed.error.code is ErrorCode.INTERNAL
    assert failed.error.retryable is False
    assert "its edit started 2 times" in failed.error.message
    for req in after:
        # A good record may have been edited before the crash, then answered again from S3 by the
        # next worker (its offset could not be committed past the poison one): same output both times.
        assert grouped[req.request_id]
        assert all(e.status is EditStatus.SUCCEEDED for e in grouped[req.request_id])
    headers = dlq_headers(dead)
    assert headers[kafka_io.DLQ_ERROR_CODE] == "INTERNAL"
    assert int(headers[kafka_io.DLQ_ATTEMPTS]) == settings.worker.max_attempts + 1
    assert dead.value is not None
    assert poison.request_id.encode() in dead.value
    assert_one_output_per_request(events, output_objects(store, settings))


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_sticky_cuda_error_exits_70_without_committing_and_a_healthy_worker_redoes_it(
    make_settings: Callable[..., Settings], worker_processes: StartWorker
) -> None:
    settings = make_settings()
    store = await prepare(settings)
    image = stage_image(store, settings, "a.png", png_bytes(64, 64))
    marker = f"STICKY-{uuid.uuid4().hex[:6]}"
    req = request(settings, image, prompt=f"make it blue {marker}")
    sick = worker_processes(settings, f"device-failure-on:{marker}")
    await sick.wait_assigned()
    await publish(settings, req)
    assert await sick.wait_exit(30) == 70
    assert sick.events("worker.fatal")
    assert sum((await lag(settings)).values()) == 1  # not committed
    assert await results(settings, count=1, timeout_s=1.0) == []  # no result: the record is not done
    assert await dead_letters(settings, count=1, timeout_s=0.5) == []

    healthy = worker_processes(settings, "standin:50")
    (result,) = await results(settings, count=1, timeout_s=60)
    assert await wait_for_no_lag(settings) == no_lag(settings)
    healthy.signal(signal.SIGTERM)
    assert await healthy.wait_exit(30) == 0
    assert result.status is EditStatus.SUCCEEDED
    assert result.attempt == 2
    assert_one_output_per_request([result], output_objects(store, settings))


# -- S3 faults ---------------------------------------------------------------------------------------------


class SlowProxy:
    """A TCP proxy that holds every server->client chunk for `delay_s` (0: pass straight through)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.delay_s = 0.0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            await asyncio.gather(
                self._pipe(reader, up_writer, slow=False),
                self._pipe(up_reader, writer, slow=True),
                return_exceptions=True,
            )
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, slow: bool) -> None:
        try:
            while data := await src.read(65536):
                if slow and self.delay_s:
                    await asyncio.sleep(self.delay_s)
                dst.write(data)
                await dst.drain()
        finally:
            dst.close()


@pytest.fixture
async def slow_s3(s3_endpoint: str) -> AsyncIterator[SlowProxy]:
    proxy = SlowProxy(int(s3_endpoint.rsplit(":", 1)[1]))
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_s3_slower_than_the_read_timeout_is_retried_with_backoff_until_it_recovers(
    make_settings: Callable[..., Settings], slow_s3: SlowProxy
) -> None:
    direct = make_settings(worker={"max_attempts": 10, "retry_backoff_s": 0.5, "retry_backoff_max_s": 1.0})
    store = await prepare(direct)  # staging and checks bypass the proxy
    req = request(direct, stage_image(store, direct, "a.png", png_bytes(64, 64)))
    s3 = direct.s3.model_copy(
        update={"endpoint_url": f"http://127.0.0.1:{slow_s3.port}", "read_timeout_s": 1.0}
    )
    settings = direct.model_copy(update={"s3": s3})
    editor = StandInEditor(edit_ms=50)
    async with running_worker(settings, lambda: editor):
        slow_s3.delay_s = 3.0  # every answer arrives after the 1 s read timeout
        await publish(settings, req)
        await asyncio.sleep(6.0)
        assert await results(settings, count=1, timeout_s=0.5) == []
        slow_s3.delay_s = 0.0
        (result,) = await results(settings, count=1, timeout_s=30)
        assert await wait_for_no_lag(settings) == no_lag(settings)
    assert result.status is EditStatus.SUCCEEDED
    assert result.attempt >= 2  # retried, not failed
    assert editor.edits == 1
    assert await dead_letters(settings, count=1, timeout_s=0.5) == []
    assert_one_output_per_request([result], output_objects(store, direct))


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_s3_outage_shorter_than_the_retries_recovers(
    kafka_bootstrap: str, private_moto: MotoServer
) -> None:
    settings = integration_settings(
        kafka_bootstrap,
        private_moto.endpoint_url,
        worker={"max_attempts": 8, "retry_backoff_s": 0.5, "retry_backoff_max_s": 1.0},
    )
    store = await prepare(settings)
    req = request(settings, stage_image(store, settings, "a.png", png_bytes(64, 64)))
    editor = StandInEditor(edit_ms=50)
    assert private_moto.process is not None
    async with running_worker(settings, lambda: editor):
        private_moto.pause()
        await publish(settings, req)
        await asyncio.sleep(8.0)
        assert await results(settings, count=1, timeout_s=0.5) == []
        private_moto.resume()
        (result,) = await results(settings, count=1, timeout_s=40)
        assert await wait_for_no_lag(settings) == no_lag(settings)
    assert result.status is EditStatus.SUCCEEDED
    assert result.attempt >= 2
    assert_one_output_per_request([result], output_objects(store, settings))


# -- broker outage ---------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_broker_stopped_for_20_s_during_work_loses_nothing(
    s3_endpoint: str, private_tansu: TansuBroker
) -> None:
    settings = integration_settings(private_tansu.bootstrap_servers, s3_endpoint)
    store = await prepare(settings)
    image = stage_image(store, settings, "a.png", png_bytes(64, 64))
    reqs = [request(settings, image) for _ in range(6)]
    editor = StandInEditor(edit_ms=1500)
    assert private_tansu.process is not None
    async with running_worker(settings, lambda: editor):
        for req in reqs:
            await publish(settings, req)
        await wait_for_attempt_record(store, settings)
        await asyncio.sleep(1.0)
        private_tansu.pause()
        await asyncio.sleep(20.0)
        private_tansu.resume()
        assert await wait_for_no_lag(settings, timeout_s=90) == no_lag(settings)
        events = await results(settings, count=len(reqs), timeout_s=30, settle_s=1.0)

    grouped = by_request(events)
    assert set(grouped) == {r.request_id for r in reqs}
    assert all(e.status is EditStatus.SUCCEEDED for e in events)
    assert_one_output_per_request(events, output_objects(store, settings))
