"""The health and metrics endpoints of a running worker (real broker and S3, HTTP over a socket)."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest
import structlog

import consumer
from consumer.app import OUTPUT_BUCKET_RETRY_S, build_worker, serve
from consumer.cli.local_services import free_port
from consumer.kafka import clients as kafka_io
from consumer.settings import Settings
from consumer.worker import EditWorker
from pipeline import Editor, StandInEditor
from storage import AttemptLedger, ImageStore, LedgerEntry
from storage.errors import StorageUnavailable
from tests.consumer.harness import png_bytes, prepare, publish, request, results, stage_image

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def status_once_listening(port: int, path: str) -> int:
    """The status code, or 0 while nothing listens yet: `serve` binds the port after the test starts it."""
    try:
        return get(port, path)[0]
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionRefusedError):
            return 0
        raise


async def fetch(port: int, path: str) -> tuple[int, str]:
    return await asyncio.to_thread(get, port, path)


async def eventually(check: Callable[[], object], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


async def test_not_ready_while_loading_ready_in_group_and_counters_move(
    make_settings: Callable[..., Settings],
) -> None:
    port = free_port()
    settings = make_settings(worker={"http_port": port, "http_host": "127.0.0.1"})
    store = await prepare(settings)
    image = stage_image(store, settings, "m.png", png_bytes(64, 64))
    loaded = threading.Event()

    def slow_load() -> Editor:
        loaded.wait(30)  # the model is "loading" until the test says so
        return StandInEditor(edit_ms=20)

    worker = build_worker(settings, editor_factory=slow_load)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(worker, stop))
    try:
        await eventually(lambda: status_once_listening(port, "/livez") == 200)
        status, body = await fetch(port, "/readyz")
        assert (status, body) == (503, "not ready: model loading\n")

        loaded.set()
        await eventually(lambda: get(port, "/readyz")[0] == 200)
        _, metrics = await fetch(port, "/metrics")
        assert "klein_edit_model_load_seconds" in metrics
        assert 'klein_edit_edits_total{code="",status="succeeded"}' not in metrics

        await publish(settings, request(settings, image))
        (result,) = await results(settings, count=1)
        assert result.status.value == "succeeded"

        def counted() -> bool:
            text = get(port, "/metrics")[1]
            return 'klein_edit_edits_total{code="",status="succeeded"} 1.0' in text

        await eventually(counted)
        _, metrics = await fetch(port, "/metrics")
        assert 'klein_edit_stage_seconds_count{stage="inference"} 1.0' in metrics
        assert f"klein_edit_billed_megapixels_total {64 * 64 / 1e6}" in metrics
        assert "klein_edit_in_flight 0.0" in metrics
        assert "klein_edit_gpu_memory_peak_bytes" in metrics
        assert "klein_edit_recompiles_after_ready 0.0" in metrics
        assert "klein_edit_end_to_end_seconds_count 1.0" in metrics
        assert 'stage="total"' not in metrics  # the end-to-end time is not one of its own parts
        # After loading: the loaded model's identity (the stand-in editor's here), not the settings'.
        info = 'attention="native",dtype="none",model="stand-in",quantization="none",revision="stand-in"'
        assert f"klein_edit_build_info{{{info}," in metrics
        assert "process_resident_memory_bytes" in metrics
        assert "python_info{" in metrics
        assert (await fetch(port, "/nope"))[0] == 404
    finally:
        loaded.set()
        stop.set()
        assert await asyncio.wait_for(task, timeout=60) == 0


class _NoDeleteLedger:
    """The real S3 ledger under a role without s3:DeleteObject: clearing fails as S3 would answer."""

    def __init__(self, ledger: AttemptLedger) -> None:
        self._ledger = ledger
        self.clears = 0

    def record_pickup(self, topic: str, partition: int, offset: int) -> LedgerEntry:
        return self._ledger.record_pickup(topic, partition, offset)

    def record_gpu_run(self, topic: str, partition: int, offset: int) -> LedgerEntry:
        return self._ledger.record_gpu_run(topic, partition, offset)

    def clear(self, topic: str, partition: int, offset: int) -> None:
        self.clears += 1
        raise StorageUnavailable(f"access denied: cannot clear {topic}/{partition}/{offset}")


async def test_a_failed_ledger_clear_shows_in_metrics(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    store = await prepare(settings)
    image = stage_image(store, settings, "l.png", png_bytes(64, 64))
    ledger = _NoDeleteLedger(AttemptLedger(store, settings.s3))
    worker = EditWorker(
        settings, editor_factory=lambda: StandInEditor(edit_ms=10), store=store, ledger=ledger
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await publish(settings, request(settings, image))
        (result,) = await results(settings, count=1)
        assert result.status.value == "succeeded"  # a failed clear loses nothing
        deadline = time.monotonic() + 10
        while b"klein_edit_ledger_clear_failures_total 1.0" not in worker.metrics.render():
            assert time.monotonic() < deadline, worker.metrics.render().decode()
            await asyncio.sleep(0.05)
        assert ledger.clears == 1
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)


async def test_a_missing_output_bucket_keeps_the_worker_not_ready_with_one_line(
    make_settings: Callable[..., Settings],
) -> None:
    """Checked at start-up: no edits that can only be dead-lettered, one clear line, ready once it exists."""
    port = free_port()
    settings = make_settings(worker={"http_port": port, "http_host": "127.0.0.1"})
    store = ImageStore(settings.s3)
    store.ensure_bucket(settings.s3.input_bucket)
    assert not store.bucket_exists(settings.s3.output_bucket)
    worker = build_worker(settings, editor_factory=lambda: StandInEditor(edit_ms=20))
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(serve(worker, stop))
        try:
            await eventually(lambda: status_once_listening(port, "/livez") == 200)
            await eventually(lambda: "output_bucket" in get(port, "/readyz")[1])
            # The model (and the moderation classifier, loaded first) load meanwhile: wait for that.
            await eventually(lambda: worker.state.model_ready)
            # Longer than one retry interval: still not ready, and still only one line about it.
            deadline = time.monotonic() + OUTPUT_BUCKET_RETRY_S * 1.5
            while time.monotonic() < deadline:
                assert await fetch(port, "/readyz") == (
                    503,
                    f"not ready: output_bucket: the output bucket s3://{settings.s3.output_bucket} does "
                    "not exist: create it, or set KLEIN_EDIT_S3__OUTPUT_BUCKET; not ready until then\n",
                )
                await asyncio.sleep(0.5)
            assert worker.state.model_ready  # the model loaded meanwhile; nothing was consumed
            unusable = [e for e in logs if e["event"] == "storage.output_bucket_unusable"]
            assert len(unusable) == 1
            assert unusable[0]["error"] == (
                f"the output bucket s3://{settings.s3.output_bucket} does not exist: create it, or set "
                "KLEIN_EDIT_S3__OUTPUT_BUCKET; not ready until then"
            )

            store.ensure_bucket(settings.s3.output_bucket)
            k = settings.kafka
            await kafka_io.ensure_topics(k, [*k.request_topics, k.result_topic, k.dlq_topic])
            await eventually(lambda: get(port, "/readyz")[0] == 200, timeout_s=60)
        finally:
            stop.set()
            assert await asyncio.wait_for(task, timeout=60) == 0
    events = [e["event"] for e in logs]
    assert events[0] == "worker.starting"
    assert logs[0]["version"] == consumer.__version__
    assert "storage.output_bucket_found" in events
